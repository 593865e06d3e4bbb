// The page: the Sceau (hold 2 s to open a session, as the seed's frontend does), then L'Essaim.
// Where the API and the stream are: ?api=…&ws=… , else this page's origin (the dev server's proxy).
import { Canvas, useFrame } from "@react-three/fiber";
import { useCallback, useRef, useState } from "react";
import { ApiError, openSession, type Session, type StateDetail } from "atom-essaim-client";

import { Swarm } from "./Swarm";

const SCEAU_MS = 2000;
const params = new URLSearchParams(location.search);
const API = params.get("api") ?? location.origin;
const WS = params.get("ws") ?? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/swarm`;

/** What the page shows, readable by a test too (window.atomExample). */
const stats = { state: "sceau", renderFps: 0, dispersed: 0 };
declare global { interface Window { atomExample: typeof stats } }
window.atomExample = stats;

function RenderRate({ onFps }: { onFps: (fps: number) => void }) {
  const frames = useRef({ n: 0, since: performance.now() });
  useFrame(() => {
    const f = frames.current, now = performance.now();
    f.n += 1;
    if (now - f.since >= 1000) {
      onFps(Math.round((f.n * 1000) / (now - f.since)));
      f.n = 0;
      f.since = now;
    }
  });
  return null;
}

export function App() {
  const [session, setSession] = useState<Session | null>(null);
  const [note, setNote] = useState("Maintenez 2 s pour ouvrir le Sceau");
  const [live, setLive] = useState<StateDetail | null>(null);
  const [fps, setFps] = useState(0);
  const [dispersed, setDispersed] = useState(0);
  const held = useRef<{ start: number; timer: number } | null>(null);

  const press = () => {
    const start = performance.now();
    setNote("…");
    held.current = {
      start,
      timer: window.setTimeout(async () => {
        held.current = null;
        try {
          setSession(await openSession(API, { durationMs: performance.now() - start }));
          stats.state = "connecting";
        } catch (error) {
          setNote(error instanceof ApiError ? `${error.code}: ${error.detail}` : String(error));
        }
      }, SCEAU_MS),
    };
  };
  const release = () => {
    if (!held.current) return;
    window.clearTimeout(held.current.timer);
    held.current = null;
    setNote("Trop court : maintenez 2 s");
  };
  const onState = useCallback((detail: StateDetail) => {
    stats.state = detail.state;
    setLive(detail);
    if (detail.state === "unauthorized") {
      setSession(null);
      setNote("session ended — maintenez 2 s pour rouvrir le Sceau");
    }
  }, []);
  const onDispersed = useCallback((count: number) => { stats.dispersed = count; setDispersed(count); }, []);
  const onFps = useCallback((value: number) => { stats.renderFps = value; setFps(value); }, []);

  if (!session) {
    return (
      <div data-testid="sceau" data-state={stats.state === "unauthorized" ? "unauthorized" : "sceau"}
        onPointerDown={press} onPointerUp={release} onPointerLeave={release}
        style={{ height: "100%", display: "grid", placeItems: "center", userSelect: "none", cursor: "pointer" }}>
        <p data-testid="note">{note}</p>
      </div>
    );
  }
  return (
    <div style={{ height: "100%", position: "relative" }}>
      <Canvas camera={{ position: [0, 0, 90], fov: 50 }} gl={{ antialias: false }}>
        <Swarm url={WS} session={session} onState={onState} onDispersed={onDispersed} />
        <RenderRate onFps={onFps} />
      </Canvas>
      <p data-testid="hud" data-state={live?.state ?? "connecting"}
        style={{ position: "absolute", top: 8, left: 12, margin: 0 }}>
        {live?.state ?? "connecting"}{live?.reason ? ` (${live.reason})` : ""} · {fps} fps · {dispersed} dispersés
      </p>
    </div>
  );
}
