// Types of the AT·OM L'Essaim client SDK (checked with `tsc --noEmit`).

export type Encoding = "delta" | "f32" | "q16" | "json";
export type State = "connecting" | "live" | "reconnecting" | "unauthorized" | "closed";

export interface Sphere { name: string; count: number; first_agent: number; color: string }
export interface Agent {
  id: number; sphere: string; name: string; function: string; frequency: number;
  status: "active" | "dispersed" | "regrouping" | string;
}
export interface Hello {
  type: "hello"; protocol: number; agents: number; tick_hz: number; fps: number;
  encoding: Encoding; q16_range: number; spheres: Sphere[]; roster: Agent[];
}
export interface SwarmEvent { type: "event"; event: string; [field: string]: unknown }
export interface FrameDetail { seq: number; t: number; positions: Float32Array; keyframe: boolean }
export interface StateDetail {
  state: State; reason: string;
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
  /** The Sceau session token (sent as `?session=`). */
  session?: string;
  /** The stream's encoding; default "delta". */
  encoding?: Encoding;
  /** Frames per second: a divisor of the server's TICK_HZ; default the server's TICK_HZ. */
  fps?: number;
  /** A WebSocket implementation; default globalThis.WebSocket (in Node 20: pass `ws`'s). */
  WebSocket?: WebSocketConstructor | (new (url: string) => unknown);
  /** The REST API's base URL, to ask whether a refused session is dead; default the stream's origin. */
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
