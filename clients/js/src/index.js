// AT·OM L'Essaim client SDK: connect() for a live, self-healing subscription, and the decoders of
// every encoding (CONTRACT.md §4, §4.1) for whoever wants only those; openSession() and operator()
// for the REST API (§2). No runtime dependencies.
export {
  connect, SwarmClient, backoffDelay, interpolateFrames, apiFromStreamUrl, DEFAULT_BACKOFF,
  SESSION_CLOSE_CODE,
} from "./client.js";
export {
  DeltaDecoder, FrameError, decodeFrame, decodeHeader, decodeF32, decodeQ16, decodeKeyframe,
  decodeJson, dequantize, ENCODING_IDS, HEADER_BYTES, MAX_DELTA_BITS, Q16_MAX, Q16_RANGE, VERSION,
} from "./protocol.js";
export { ApiError, API_PREFIX, closeSession, explainFailure, openSession, operator, request } from "./rest.js";
