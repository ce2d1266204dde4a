// The grammar's tests: the assertion cases under test/cases (`*.blk-test`,
// not `.blk`: they are not programs; every
// construct, scope by scope), then a snapshot of the scopes of every .blk
// file the repository ships (blocks/, examples/), so a change to the
// grammar shows what it changes in real files. `UPDATE=1 npm test`
// rewrites the snapshots.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { spawnSync } = require("child_process");

const here = path.resolve(__dirname, "..");
const repo = path.resolve(here, "..", "..");
const grammar = path.join(here, "syntaxes", "blk.tmLanguage.json");
const snapshots = path.join(here, "test", "snapshots");
const bin = (name) => path.join(here, "node_modules", ".bin", name);

function run(tool, args) {
  const r = spawnSync(bin(tool), args, { cwd: here, stdio: "inherit" });
  if (r.status !== 0) {
    process.exit(r.status || 1);
  }
}

function shipped() {
  const out = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".blk")) out.push(p);
    }
  };
  walk(path.join(repo, "blocks"));
  walk(path.join(repo, "examples"));
  return out.sort();
}

run("vscode-tmgrammar-test", ["-g", grammar, "test/cases/*.blk-test"]);

const update = process.env.UPDATE === "1";
const work = fs.mkdtempSync(path.join(os.tmpdir(), "blk-grammar-"));
const files = shipped();
if (files.length < 20) {
  console.error(`only ${files.length} shipped .blk files found under ${repo}`);
  process.exit(1);
}
const names = files.map((f) => path.relative(repo, f).split(path.sep).join("__"));
files.forEach((f, i) => {
  fs.copyFileSync(f, path.join(work, names[i]));
  const snap = path.join(snapshots, names[i] + ".snap");
  if (fs.existsSync(snap)) fs.copyFileSync(snap, path.join(work, names[i] + ".snap"));
  else if (!update) {
    console.error(`no grammar snapshot for ${path.relative(repo, f)}: run \`UPDATE=1 npm test\` and review it`);
    process.exit(1);
  }
});
run("vscode-tmgrammar-snap", ["-g", grammar, "-s", "source.blk", ...(update ? ["-u"] : []), path.join(work, "*.blk")]);
if (update) {
  fs.rmSync(snapshots, { recursive: true, force: true });
  fs.mkdirSync(snapshots, { recursive: true });
  names.forEach((n) => fs.copyFileSync(path.join(work, n + ".snap"), path.join(snapshots, n + ".snap")));
}
fs.rmSync(work, { recursive: true, force: true });
console.log(`grammar: the cases pass; ${files.length} shipped files match their snapshots`);
