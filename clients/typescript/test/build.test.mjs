// The committed dist/ is what src/ compiles to, is one self-contained ES module
// (the gateway embeds it with include_str! and serves it at /ui/client.js), and
// the published package carries its types.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";
import { pkgDir, tempDir } from "./harness.mjs";

const run = promisify(execFile);
const tsc = path.join(pkgDir, "node_modules", "typescript", "bin", "tsc");

test("dist/ is up to date with src/ (npm run build, then commit dist/)", async () => {
  const out = tempDir("xcord-dist-");
  try {
    await run(process.execPath, [tsc, "-p", "tsconfig.json", "--outDir", out], { cwd: pkgDir });
    for (const f of ["index.js", "index.d.ts"]) {
      const fresh = fs.readFileSync(path.join(out, f), "utf8");
      const committed = fs.readFileSync(path.join(pkgDir, "dist", f), "utf8");
      assert.ok(fresh === committed, `dist/${f} differs from a fresh build of src/: run \`npm run build\` and commit dist/`);
    }
    assert.deepEqual(fs.readdirSync(out).sort(), ["index.d.ts", "index.js"], "tsc emits exactly one module and its types");
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

test("dist/index.js is one self-contained ES module (no imports)", async () => {
  const js = fs.readFileSync(path.join(pkgDir, "dist", "index.js"), "utf8");
  assert.doesNotMatch(js, /^\s*import[\s{*"']/m, "no static import");
  assert.doesNotMatch(js, /\bimport\s*\(/, "no dynamic import");
  assert.doesNotMatch(js, /\brequire\s*\(/, "no require");
  assert.doesNotMatch(js, /^\s*export\s+(\*|\{[^}]*\})\s+from\b/m, "no re-export");
  assert.match(js, /^export class GatewayClient\b/m);
  // It loads as a module by itself, from a data: URL (nothing to resolve).
  const mod = await import("data:text/javascript;base64," + Buffer.from(js).toString("base64"));
  assert.equal(typeof mod.GatewayClient, "function");
  assert.equal(typeof mod.backoffDelay, "function");
});

test("npm pack lists the JS and the .d.ts types; package.json points at them", async () => {
  const { stdout } = await run("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: pkgDir });
  const [info] = JSON.parse(stdout);
  const files = info.files.map((f) => f.path).sort();
  assert.equal(info.name, "@xcord/gateway-client");
  assert.equal(info.version, "0.1.0");
  for (const f of ["dist/index.d.ts", "dist/index.js", "package.json", "README.md"]) assert.ok(files.includes(f), `${f} in ${files}`);
  assert.ok(!files.some((f) => f.startsWith("test/") || f.startsWith("src/") || f.includes("node_modules")), `${files}`);
  const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8"));
  assert.equal(pkg.type, "module");
  assert.equal(pkg.license, "MIT");
  assert.equal(pkg.types, "./dist/index.d.ts");
  assert.equal(pkg.exports["."].types, "./dist/index.d.ts");
  assert.equal(pkg.exports["."].import, "./dist/index.js");
  assert.deepEqual(pkg.dependencies ?? {}, {}, "zero runtime dependencies");
});

test("the published types narrow events as documented (tsc on a consumer)", async () => {
  await run(process.execPath, [tsc, "-p", path.join("test", "types", "tsconfig.json")], { cwd: pkgDir }).catch((e) => {
    assert.fail(`type check failed:\n${e.stdout}${e.stderr}`);
  });
});
