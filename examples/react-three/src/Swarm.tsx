// L'Essaim as one instanced mesh: 350 agents, coloured by sphere, drawn where the SDK's
// interpolation puts them for this animation frame (a 30 fps delta stream, smooth at 60).
import { useFrame } from "@react-three/fiber";
import { useEffect, useMemo, useRef } from "react";
import * as THREE from "three";
import { connect, type Session, type StateDetail, type SwarmClient } from "atom-essaim-client";

export interface SwarmProps {
  url: string;
  session: Session;
  onState: (state: StateDetail) => void;
  onDispersed: (count: number) => void;
}

const MAX_AGENTS = 1024;
const dummy = new THREE.Object3D();

export function Swarm({ url, session, onState, onDispersed }: SwarmProps) {
  const mesh = useRef<THREE.InstancedMesh>(null);
  const client = useRef<SwarmClient | null>(null);
  const colours = useMemo(() => new THREE.Color(), []);

  useEffect(() => {
    const c = (client.current = connect(url, { session, fps: 30 }));
    const offState = c.on("state", onState);
    const offHello = c.on("hello", (hello) => {
      const m = mesh.current;
      if (!m) return;
      m.count = hello.agents;
      for (const sphere of hello.spheres) {
        colours.set(sphere.color);
        for (let i = sphere.first_agent; i < sphere.first_agent + sphere.count; i++) m.setColorAt(i, colours);
      }
      if (m.instanceColor) m.instanceColor.needsUpdate = true;
    });
    const offEvent = c.on("event", (event) => {
      if (event.event === "agent.status" || event.event === "swarm.dispersal" || event.event === "swarm.regroup") {
        onDispersed(c.roster.filter((agent) => agent.status === "dispersed").length);
      }
    });
    return () => { offState(); offHello(); offEvent(); c.close(); };
  }, [url, session, onState, onDispersed, colours]);

  useFrame(() => {
    const c = client.current, m = mesh.current;
    if (!c?.hello || !m) return;
    const p = c.interpolate();
    for (let i = 0; i < c.hello.agents; i++) {
      dummy.position.set(p[3 * i], p[3 * i + 1], p[3 * i + 2]);
      dummy.updateMatrix();
      m.setMatrixAt(i, dummy.matrix);
    }
    m.instanceMatrix.needsUpdate = true;
  });

  return (
    <instancedMesh ref={mesh} args={[undefined, undefined, MAX_AGENTS]} count={0} frustumCulled={false}>
      <sphereGeometry args={[0.9, 10, 10]} />
      <meshBasicMaterial />
    </instancedMesh>
  );
}
