// The package as it would be published: `npm pack`'s tarball holds the modules and their types,
// installs into a fresh app (no network: it has no dependencies) and imports, in JavaScript and
// in TypeScript (strict).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const TSC = join(PACKAGE, "node_modules", "typescript", "bin", "tsc");
const run = (command, args, cwd) => execFileSync(command, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

test("npm pack: the tarball installs into a fresh app, imports, and type-checks", () => {
  const work = mkdtempSync(join(tmpdir(), "atom-sdk-pack-"));
  try {
    const [packed] = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", work], PACKAGE));
    const files = packed.files.map((f) => f.path).sort();
    for (const file of ["package.json", "README.md", "src/index.js", "src/index.d.ts", "src/client.js", "src/protocol.js", "src/rest.js"]) {
      assert.ok(files.includes(file), `${file} not in ${files.join(", ")}`);
    }
    assert.ok(!files.some((f) => f.startsWith("test/") || f.includes("node_modules")), files.join(", "));

    const app = join(work, "app");
    run("mkdir", ["-p", app], work);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "fresh-app", private: true, type: "module" }));
    run("npm", ["install", "--offline", "--no-audit", "--no-fund", join(work, packed.filename)], app);
    const wanted = JSON.parse(readFileSync(join(app, "package.json"), "utf8")).dependencies["atom-essaim-client"];
    assert.match(wanted, /\.tgz$/);

    writeFileSync(join(app, "main.js"), [
      'import { connect, openSession, operator, ApiError, DeltaDecoder } from "atom-essaim-client";',
      'console.log([typeof connect, typeof openSession, typeof operator, typeof ApiError, typeof DeltaDecoder].join(" "));',
    ].join("\n"));
    assert.equal(run("node", ["main.js"], app).trim(), "function function function function function");

    writeFileSync(join(app, "main.ts"), [
      'import { connect, operator, type SwarmEvent } from "atom-essaim-client";',
      'const client = connect("ws://127.0.0.1:8001/ws/swarm", { session: "v1.a.b" });',
      'client.on("event", (e: SwarmEvent) => { if (e.event === "swarm.dispersal") console.log(e.level, e.count); });',
      'operator("http://127.0.0.1:8000", "t").disperse("partial").catch((e: unknown) => console.log(e));',
    ].join("\n"));
    writeFileSync(join(app, "tsconfig.json"), JSON.stringify({ compilerOptions: {
      target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, noEmit: true,
      lib: ["ES2022", "DOM"], types: [], skipLibCheck: false }, files: ["main.ts"] }));
    run("node", [TSC, "-p", "."], app);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
