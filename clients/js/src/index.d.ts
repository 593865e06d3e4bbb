// Types of the AT·OM L'Essaim client SDK (checked with `tsc --noEmit`).

export type Encoding = "delta" | "f32" | "q16" | "json";
export type State = "connecting" | "live" | "reconnecting" | "unauthorized" | "closed";

export type AgentStatus = "active" | "dispersed" | "regrouping";
export type SafeguardState = "closed" | "open" | "half_open";
export type DispersalLevel = "partial" | "sectoral" | "total";

export interface Sphere { name: string; count: number; first_agent: number; color: string }
/** An agent of the hello's roster (CONTRACT §2: an agent without its position). */
export interface Agent {
  id: number; sphere: string; name: string; function: string; frequency: number;
  status: AgentStatus;
}
export interface Position { x: number; y: number; z: number }
/** An agent as the REST API gives it, with its position. */
export interface AgentDetail extends Agent { position: Position }
export interface Hello {
  type: "hello"; protocol: number; agents: number; tick_hz: number; fps: number;
  encoding: Encoding; q16_range: number; spheres: Sphere[]; roster: Agent[];
}
/** The §4 events, told apart by `event`. */
export type SwarmEvent =
  | { type: "event"; event: "agent.status"; agent: number; status: AgentStatus; command_id?: string }
  | { type: "event"; event: "agent.frequency"; agent: number; frequency: number; command_id?: string }
  | { type: "event"; event: "swarm.dispersal"; level: DispersalLevel; sphere: string | null; count: number; command_id: string }
  | { type: "event"; event: "swarm.regroup"; count: number; command_id: string }
  | { type: "event"; event: "safeguard"; state: SafeguardState; reason: string; at: number };
export type SwarmEventName = SwarmEvent["event"];
export interface FrameDetail { seq: number; t: number; positions: Float32Array; keyframe: boolean }
export interface StateDetail {
  state: State; reason: string;
  /** Why it keeps failing, when that can be told (a page whose Origin the server refuses). */
  code?: "origin_not_allowed";
  /** When a reconnect is scheduled: its number (1, 2, …) and the delay before it. */
  attempt?: number; retryInMs?: number;
}

export interface Header { version: number; encoding: number; n: number; seq: number; t: number }
export interface DecodedFrame { seq: number; t: number; n: number; positions: Float32Array; q?: Int16Array; keyframe?: boolean }
export interface DecodedQ16 extends DecodedFrame { q: Int16Array }
export interface DecodedKeyframe extends DecodedQ16 { before: Int16Array }
export interface DeltaResult { seq: number; t: number; n: number; q: Int16Array; keyframe: boolean }

export type BinaryData = ArrayBuffer | ArrayBufferView;

export interface Backoff { initialMs: number; maxMs: number; stableMs: number }

/** The subset of the WebSocket API the client uses (browsers' WebSocket, or the `ws` package's). */
export interface WebSocketLike {
  binaryType: string;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  close(code?: number, reason?: string): void;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ConnectOptions {
  /** The Sceau session: its token (sent as `?session=`), or what openSession() resolved with
   *  (its token, and the API to ask when the stream refuses it). */
  session?: string | Session;
  /** The stream's encoding; default "delta". */
  encoding?: Encoding;
  /** Frames per second: a divisor of the server's TICK_HZ; default the server's TICK_HZ. */
  fps?: number;
  /** A WebSocket implementation; default globalThis.WebSocket (in Node 20: pass `ws`'s). */
  WebSocket?: WebSocketConstructor | (new (url: string) => unknown);
  /** The REST API's base URL, to ask whether a refused session is dead; default the session's
   *  (from openSession()), else the stream's origin. */
  api?: string;
  /** Reconnect delays; default 500 ms doubling to 10 s, reset after 60 s live. */
  backoff?: Partial<Backoff>;
  /** Interpolation delay in seconds; default 2.5 frame intervals of the stream. */
  interpolationDelay?: number;
  /** For tests: the random source of the jitter, and fetch. */
  random?: () => number;
  fetch?: (url: string, init?: { headers?: Record<string, string> }) => Promise<{ status: number }>;
}

export interface EventMap { hello: Hello; frame: FrameDetail; event: SwarmEvent; state: StateDetail }

export class SwarmClient {
  readonly url: string;
  readonly state: State;
  readonly reason: string;
  readonly hello: Hello | null;
  readonly roster: Agent[];
  readonly spheres: Sphere[];
  /** The newest positions, x y z per agent (this client's array, updated in place). */
  readonly positions: Float32Array;
  readonly seq: number;
  readonly t: number;
  /** The open WebSocket, if any. */
  readonly socket: WebSocketLike | null;
  readonly stats: { frames: number; keyframes: number; bytes: number; connections: number; reconnects: number };
  /** Local seconds minus server seconds, at the smallest latency seen (null before a frame). */
  readonly clockOffset: number | null;
  readonly frameInterval: number;
  readonly delay: number;
  on<K extends keyof EventMap>(event: K, listener: (detail: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(event: K, listener: (detail: EventMap[K]) => void): void;
  close(reason?: string): void;
  serverNow(localSeconds?: number): number;
  /** Positions at renderTime − delay (server clock, seconds), interpolated between frames. */
  interpolate(renderTime?: number, delay?: number): Float32Array;
}

export function connect(url: string, options?: ConnectOptions): SwarmClient;

// -- the REST API (CONTRACT §2) ------------------------------------------------------------------

/** The error codes of CONTRACT §2 and §2.3, and the client's own (`unreachable`,
 *  `origin_not_allowed` told from a browser's silent failure, `http_<status>` for a non-JSON answer). */
export type ApiErrorCode =
  | "sceau_too_short" | "sceau_session_required" | "sceau_session_invalid" | "rate_limited"
  | "operator_token_required" | "operator_token_invalid" | "role_required" | "mfa_required"
  | "brise_circuit_open" | "backend_unavailable" | "validation_error" | "invalid_json"
  | "agent_not_found" | "sphere_not_found" | "not_found" | "method_not_allowed"
  | "host_not_allowed" | "origin_not_allowed" | "unreachable"
  | (string & {});

export class ApiError extends Error {
  readonly name: "ApiError";
  /** The HTTP status; 0 when no answer could be read. */
  readonly status: number;
  readonly code: ApiErrorCode;
  readonly detail: string;
  /** 422: each bad field and what is wrong with it. */
  readonly fields: Record<string, string> | null;
  /** Seconds from Retry-After (423 brise_circuit_open, 429, 503), else null. */
  readonly retryAfter: number | null;
  readonly body: unknown;
}

export interface Session { session: string; /** Unix seconds. */ expiresAt: number; frequency: number; api: string }
export type FetchLike = (url: string, init?: RequestInit) => Promise<Response>;
export interface RequestOptions {
  body?: unknown; session?: string; token?: string; idempotencyKey?: string;
  fetch?: FetchLike; signal?: AbortSignal;
}
export function request<T = unknown>(api: string, method: string, path: string, options?: RequestOptions):
  Promise<{ status: number; body: T; headers: Headers }>;
export function openSession(api: string, options?: { durationMs?: number; fetch?: FetchLike; signal?: AbortSignal }): Promise<Session>;
export function closeSession(api: string, session: string | Session, options?: { fetch?: FetchLike }): Promise<void>;
export function explainFailure(url: string, error: unknown, fetch?: FetchLike): Promise<ApiError>;
export const API_PREFIX: "/api/v1";

export interface Dispersal { level: DispersalLevel; sphere: string | null; dispersed: number; command_id: string }
export interface Regroup { regrouped: number; command_id: string }
export interface SafeguardStatus { state: SafeguardState; reason?: string | null; [field: string]: unknown }
/** 200 when the circuit closed; 202 while a quorum of guardians gathers (§2.3). */
export interface ResetAnswer extends SafeguardStatus { approvals?: number; needed?: number; expires_in_s?: number }
export interface AuditRecord {
  id: number | string; at: number; kind: "dispersal" | "regroup" | "retune" | "safeguard";
  command_id?: string | null; role: string | null; operator: string | null; [field: string]: unknown;
}
export interface Audit { records: AuditRecord[]; chain: { records: number; verified: boolean; first_broken: number | string | null } }
export interface CommandOptions { idempotencyKey?: string }

/** An operators' console: each method throws ApiError with the contract's code on a refusal. */
export interface Operator {
  readonly api: string;
  disperse(level: DispersalLevel, options?: CommandOptions & { sphere?: string | null }): Promise<Dispersal>;
  regroup(options?: CommandOptions): Promise<Regroup>;
  retune(agent: number, frequency: number, options?: CommandOptions): Promise<AgentDetail>;
  reset(): Promise<ResetAnswer>;
  audit(options?: { limit?: number }): Promise<Audit>;
  safeguard(): Promise<SafeguardStatus>;
}
/** Commands with `Authorization: Bearer <token>` (role operator; reset and audit: guardian). */
export function operator(api: string, token: string, options?: { fetch?: FetchLike }): Operator;
export function backoffDelay(attempt: number, backoff?: Pick<Backoff, "initialMs" | "maxMs">, random?: () => number): number;
export function interpolateFrames(history: { t: number; positions: Float32Array }[], at: number, out?: Float32Array | null): Float32Array | null;
export function apiFromStreamUrl(url: string): string;
export const DEFAULT_BACKOFF: Readonly<Backoff>;
export const SESSION_CLOSE_CODE: 4401;

export class FrameError extends Error {}
export class DeltaDecoder {
  prev: Int16Array | null;
  prev2: Int16Array | null;
  readonly keyframes: number;
  reset(): void;
  decode(data: BinaryData): DeltaResult;
}
export function decodeHeader(data: BinaryData): Header;
export function decodeF32(data: BinaryData): DecodedFrame;
export function decodeQ16(data: BinaryData): DecodedQ16;
export function decodeKeyframe(data: BinaryData): DecodedKeyframe;
export function decodeJson(message: string | object): DecodedFrame;
export function decodeFrame(data: BinaryData | string, delta?: DeltaDecoder | null, out?: Float32Array | null): DecodedFrame;
export function dequantize(q: Int16Array, out?: Float32Array): Float32Array;
export const ENCODING_IDS: Readonly<{ f32: 1; q16: 2; delta: 3; keyframe: 4 }>;
export const HEADER_BYTES: 16;
export const MAX_DELTA_BITS: 18;
export const Q16_MAX: 32767;
export const Q16_RANGE: number;
export const VERSION: 1;
