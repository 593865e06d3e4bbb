import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// `npm run dev` against a local `atom serve`: the dev server proxies the API and the stream, so the
// page, the API and the WebSocket share one origin and CORS_ORIGINS needs no change.
const api = process.env.ATOM_API ?? "http://127.0.0.1:8000";
const ws = process.env.ATOM_WS ?? "ws://127.0.0.1:8001";
export default defineConfig({
  plugins: [react()],
  server: { proxy: { "/api": api, "/ws": { target: ws, ws: true } } },
  build: { chunkSizeWarningLimit: 1200 },
});
