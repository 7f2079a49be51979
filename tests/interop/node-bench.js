#!/usr/bin/env node
"use strict";
// The Node row of the end-to-end benchmark (benches/e2e.rs): @openiap/nodeapi 0.0.39's client
// against node-server.js (the same package's server), on one transport, with the same ping
// count and file as our client.
//
//   node node-bench.js --transport socket|pipe|ws|grpc --file PATH [--sha256 HEX] [--pings N]
//                      [--runs N] [--ping-seconds S] [--timeout SECONDS] [--pings-only]
//                      [--no-checksum]
//
// It starts node-server.js on a free loopback port (or a fresh pipe name) with a temporary data
// directory, then for each run: connect and sign in (not timed), N sequential pings (stopped
// early after --ping-seconds: the package's socket transport leaves Nagle's algorithm on and
// a ping takes about 90 ms there), UploadFile of --file, DownloadFile of what was uploaded
// (timed), and checks outside the timing that the server verified the upload's checksum and
// that the downloaded file has the expected SHA-256. "pings" in the output is the number
// actually sent. With --pings-only a run stops after the pings (the pinned ping rows of the
// bench run this under `taskset`, with the server as its child); --file is then not read.
// --no-checksum runs the transfers with the package's default, ChecksumCheckFiles off: no
// checksum in beginstream, none verified on download. The server then answers the upload
// before it hashes the file for the harness's check, so that hash is outside the timing.
//
// stdout: one JSON line per run,
//   {"transport":..,"run":i,"pings":N,"ping_ms":..,"pings_per_s":..,"bytes":..,
//    "upload_ms":..,"download_ms":..,"upload_mib_per_s":..,"download_mib_per_s":..,"checksum_ok":true}
// or {"error":"..."} and exit 1. Package and server logs go to stderr.
// Exit codes: 0 every run passed, 1 a run failed, 2 usage error, 3 overall timeout.

const childProcess = require("child_process");
const crypto = require("crypto");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");
const readline = require("readline");
const common = require("./common");

const { EXIT, emitJson, errorMessage } = common;

const SPEC = {
  transport: { kind: "string", required: true, choices: ["socket", "pipe", "ws", "grpc"] },
  file: { kind: "string", meta: "PATH", required: true },
  sha256: { kind: "string", meta: "HEX" },
  pings: { kind: "int", meta: "N", default: 10000, max: 10000000 },
  runs: { kind: "int", meta: "N", default: 1, min: 1, max: 100 },
  "ping-seconds": { kind: "int", meta: "S", default: 30, min: 1, max: 86400 },
  timeout: { kind: "int", meta: "SECONDS", default: 900, min: 1, max: 86400 },
  "pings-only": { kind: "flag" },
  "no-checksum": { kind: "flag" },
};

const TYPE_PREFIX = "type.googleapis.com/openiap.";
const USERNAME = "harness";
/** How long the server may take to print its listening line. */
const LISTEN_MS = 20000;
/** How long the connect step waits for a gRPC channel to become ready. */
const GRPC_READY_MS = 10000;
/** How long to wait for the server's upload event after the upload reply. */
const EVENT_MS = 10000;

function main() {
  common.routeConsoleToStderr();
  const args = common.cliArgs("node-bench.js", SPEC, (a) => {
    if (!fs.statSync(a.file, { throwIfNoEntry: false })) throw new common.UsageError(`--file ${a.file} does not exist`);
  });
  const workdir = fs.mkdtempSync(path.join(os.tmpdir(), "openiap-node-bench-"));
  let server = null;
  const finish = (code) => {
    if (server) server.stop();
    try { fs.rmSync(workdir, { recursive: true, force: true }); } catch (_) { /* best effort */ }
    process.exit(code);
  };
  const timer = setTimeout(() => {
    emitJson({ error: `overall timeout of ${args.timeout} s reached` });
    finish(EXIT.TIMEOUT);
  }, args.timeout * 1000);
  process.on("uncaughtException", (e) => {
    emitJson({ error: `uncaught: ${errorMessage(e)}` });
    finish(EXIT.FAILED);
  });
  // Stopped from outside: still stop the server and remove the temporary files.
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => {
      emitJson({ error: `stopped by ${signal}` });
      finish(EXIT.FAILED);
    });
  }
  (async () => {
    const expected = args.pingsOnly ? "" : args.sha256 ? args.sha256.toLowerCase() : await fileSha256(args.file);
    const password = crypto.randomBytes(9).toString("hex");
    server = await NodeServer.start(args.transport, workdir, password);
    const api = common.loadPackage();
    const { protowrap, config } = api;
    await protowrap.init();
    // On: upload sends the checksum, download verifies it. Off is the package's default.
    config.ChecksumCheckFiles = !args.noChecksum;
    common.routePingPong(protowrap, { answerPings: false });
    common.patchConnect(protowrap);
    for (let run = 0; run < args.runs; run++) {
      const row = await oneRun(api, server, args, password, expected, path.join(workdir, `run-${run}`));
      emitJson({ transport: args.transport, run, ...row });
    }
  })().then(() => {
    clearTimeout(timer);
    finish(EXIT.OK);
  }, (e) => {
    clearTimeout(timer);
    emitJson({ error: errorMessage(e) });
    finish(EXIT.FAILED);
  });
}

/** One connection: signin, pings, upload, download; returns the JSON fields of the row. */
async function oneRun(api, server, args, password, expected, dir) {
  const { protowrap, openiap } = api;
  fs.mkdirSync(dir, { recursive: true });
  const client = new openiap(server.url);
  client.allowconnectgiveup = true;
  await client.connect();
  if (client.client && client.client.protocol === "grpc") {
    await new Promise((resolve, reject) => {
      client.client.grpc.waitForReady(Date.now() + GRPC_READY_MS, (e) => (e ? reject(e) : resolve()));
    });
  }
  const signin = await client.Signin({ username: USERNAME, password });
  const jwt = signin.jwt;

  const pingValue = api.PingRequest.encode(api.PingRequest.create()).finish();
  const pingStart = process.hrtime.bigint();
  const pingDeadline = pingStart + BigInt(args.pingSeconds) * 1000000000n;
  let pings = 0;
  for (; pings < args.pings && process.hrtime.bigint() < pingDeadline; pings++) {
    // The envelope of the package's own Ping(); common.routePingPong lets the pong settle it.
    const ping = api.Envelope.create({ command: "ping", priority: 0, data: { type_url: TYPE_PREFIX + "PingRequest", value: pingValue } });
    const [id, promise] = protowrap._RPC(client.client, ping);
    const pong = await promise;
    if (pong.command !== "pong" || pong.rid !== id) throw new Error(`ping ${id} answered with '${pong.command}' rid '${pong.rid}'`);
  }
  const pingNs = Number(process.hrtime.bigint() - pingStart);
  const pingFields = { pings, ping_ms: pingNs / 1e6, pings_per_s: pings / Math.max(pingNs / 1e9, 1e-9) };
  if (args.pingsOnly) {
    client.Close();
    fs.rmSync(dir, { recursive: true, force: true });
    return pingFields;
  }

  const bytes = fs.statSync(args.file).size;
  const uploadStart = process.hrtime.bigint();
  const reply = await client.UploadFile({ filename: args.file, jwt });
  const uploadNs = Number(process.hrtime.bigint() - uploadStart);
  if (!reply.id) throw new Error("uploadreply carries no id");
  const event = await server.waitFor((e) => e.event === "upload" && e.id === reply.id, EVENT_MS);
  const uploadOk = event.ok === true && event.checksum_verified === !args.noChecksum && event.sha256 === expected && event.bytes === bytes;

  const folder = path.join(dir, "download");
  fs.mkdirSync(folder);
  const downloadStart = process.hrtime.bigint();
  const result = await client.DownloadFile({ id: reply.id, folder });
  const downloadNs = Number(process.hrtime.bigint() - downloadStart);
  const got = path.join(folder, result.filename || "");
  const gotSha = await fileSha256(got);
  const serverChecksum = result.checksum ? String(result.checksum).toLowerCase() : "";
  const downloadOk = gotSha === expected && (args.noChecksum || serverChecksum === expected);
  client.Close();
  fs.rmSync(dir, { recursive: true, force: true });
  server.clearEvents();

  const mib = bytes / (1024 * 1024);
  return {
    ...pingFields,
    bytes,
    upload_ms: uploadNs / 1e6,
    download_ms: downloadNs / 1e6,
    upload_mib_per_s: mib / Math.max(uploadNs / 1e9, 1e-9),
    download_mib_per_s: mib / Math.max(downloadNs / 1e9, 1e-9),
    checksum_ok: uploadOk && downloadOk,
  };
}

function fileSha256(file) {
  return new Promise((resolve, reject) => {
    const hash = crypto.createHash("sha256");
    fs.createReadStream(file, { highWaterMark: 1 << 20 })
      .on("data", (chunk) => hash.update(chunk))
      .on("end", () => resolve(hash.digest("hex")))
      .on("error", reject);
  });
}

/** A free loopback port a moment ago (the package turns port 0 into 80). */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, common.LOOPBACK, () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** node-server.js as a child process; its stdout JSON events are kept until asked for. */
class NodeServer {
  static async start(transport, workdir, password) {
    const script = path.join(__dirname, "node-server.js");
    const args = [script, "--transport", transport, "--data", path.join(workdir, "server-data"),
      "--password", password, "--username", USERNAME, "--lifetime", "86400", "--exit-on-stdin-eof"];
    if (transport === "pipe") args.push("--pipe", `oiw-bench-${process.pid}-${crypto.randomBytes(3).toString("hex")}`);
    else args.push("--port", String(await freePort()));
    const child = childProcess.spawn(process.execPath, args, { stdio: ["pipe", "pipe", "inherit"], cwd: __dirname });
    const server = new NodeServer(child);
    server.url = await server.listening();
    return server;
  }

  constructor(child) {
    this.child = child;
    this.events = [];
    this.waiters = [];
    this.exited = null;
    this.onListening = null;
    child.on("exit", (code, signal) => {
      this.exited = `node-server.js exited (code ${code}, signal ${signal})`;
      for (const w of this.waiters.splice(0)) w.reject(new Error(this.exited));
      if (this.onListening) this.onListening.reject(new Error(this.exited));
    });
    readline.createInterface({ input: child.stdout }).on("line", (line) => this.line(line));
  }

  line(line) {
    if (line.startsWith("listening ")) {
      if (this.onListening) this.onListening.resolve(line.split(" ")[2]);
      this.onListening = null;
      return;
    }
    let event;
    try { event = JSON.parse(line); } catch (_) { return; }
    if (event.event === "ping" || event.event === "connected" || event.event === "disconnected" || event.event === "signin") return;
    if (event.event === "fatal" && this.onListening) this.onListening.reject(new Error(event.error));
    const waiter = this.waiters.find((w) => w.match(event));
    if (waiter) {
      this.waiters.splice(this.waiters.indexOf(waiter), 1);
      waiter.resolve(event);
    } else {
      this.events.push(event);
    }
  }

  listening() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`node-server.js printed no listening line within ${LISTEN_MS} ms`)), LISTEN_MS);
      const done = (f) => (v) => { clearTimeout(timer); f(v); };
      this.onListening = { resolve: done(resolve), reject: done(reject) };
    });
  }

  /** The first stdout event matching `match`, already seen or arriving within `ms`. */
  waitFor(match, ms) {
    const seen = this.events.findIndex(match);
    if (seen !== -1) return Promise.resolve(this.events.splice(seen, 1)[0]);
    if (this.exited) return Promise.reject(new Error(this.exited));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`node-server.js reported no matching event within ${ms} ms`)), ms);
      this.waiters.push({ match, resolve: (e) => { clearTimeout(timer); resolve(e); }, reject: (e) => { clearTimeout(timer); reject(e); } });
    });
  }

  /** Drops the events nobody waited for. */
  clearEvents() {
    this.events.length = 0;
  }

  stop() {
    if (this.exited) return;
    try { this.child.stdin.end(); } catch (_) { /* gone */ }
    try { this.child.kill("SIGTERM"); } catch (_) { /* gone */ }
  }
}

main();
