#!/usr/bin/env node
"use strict";
// Test client built on @openiap/nodeapi 0.0.39 (its `openiap` class). It connects to --url and
// runs, in order: signin, N pings, an unknown command, an upload of a generated file with the
// package's SHA-256 checksum on, and a download of that file checked byte for byte.
//
//   node node-client.js --url URL --password PW [--username NAME] [--pings N] [--size BYTES]
//                       [--seed N] [--command NAME] [--timeout SECONDS] [--allow-missing-checksum]
//
// stdout: one JSON line per step, {"step":"<name>","ok":true|false,...}, ending with
// {"step":"done","ok":true,...} on success. Package logs go to stderr.
// Exit codes: 0 all steps passed, 1 a step failed, 2 usage error, 3 overall timeout.
// See README.md.

const fs = require("fs");
const os = require("os");
const path = require("path");
const common = require("./common");

const { EXIT, emitJson, errorMessage } = common;

const SPEC = {
  url: { kind: "string", meta: "URL", required: true },
  password: { kind: "string", meta: "PW", required: true },
  username: { kind: "string", meta: "NAME", default: "harness" },
  pings: { kind: "int", meta: "N", default: 3, max: 10000 },
  size: { kind: "int", meta: "BYTES", default: 1048576, max: 512 * 1024 * 1024 },
  seed: { kind: "int", meta: "N" },
  command: { kind: "string", meta: "NAME", default: "nosuchcommand" },
  timeout: { kind: "int", meta: "SECONDS", default: 60, min: 1, max: 3600 },
  "allow-missing-checksum": { kind: "flag" },
};

const TYPE_PREFIX = "type.googleapis.com/openiap.";
/** How long the connect step waits for a gRPC channel to become ready. */
const GRPC_READY_MS = 10000;

function main() {
  common.routeConsoleToStderr();
  const args = common.cliArgs("node-client.js", SPEC, (a) => {
    const scheme = a.url.split(":")[0];
    if (!["socket", "pipe", "ws", "grpc"].includes(scheme)) {
      throw new common.UsageError(`--url scheme must be socket, pipe, ws or grpc, found '${scheme}'`);
    }
  });
  if (args.seed === undefined) args.seed = 0x5eed + args.size; // as in shared/vectors

  const workdir = fs.mkdtempSync(path.join(os.tmpdir(), "openiap-interop-client-"));
  const cleanup = () => {
    try { fs.rmSync(workdir, { recursive: true, force: true }); } catch (_) { /* best effort */ }
  };
  const finish = (code) => {
    cleanup();
    process.exit(code);
  };
  const timer = setTimeout(() => {
    emitJson({ step: "timeout", ok: false, error: `overall timeout of ${args.timeout} s reached` });
    finish(EXIT.TIMEOUT);
  }, args.timeout * 1000);
  process.on("uncaughtException", (e) => {
    emitJson({ step: "internal", ok: false, error: errorMessage(e) });
    process.stderr.write(`node-client: uncaught ${e && e.stack ? e.stack : e}\n`);
    finish(EXIT.FAILED);
  });

  const started = Date.now();
  run(args, workdir).then((count) => {
    clearTimeout(timer);
    emitJson({ step: "done", ok: true, steps: count, elapsed_ms: Date.now() - started });
    finish(EXIT.OK);
  }, (failure) => {
    clearTimeout(timer);
    emitJson({ step: failure.step || "internal", ok: false, error: errorMessage(failure.error || failure) });
    finish(EXIT.FAILED);
  });
}

/** Runs one named step; a thrown error becomes {step, error} for the caller. */
async function step(name, fn) {
  try {
    const fields = await fn();
    emitJson({ step: name, ok: true, ...fields });
  } catch (error) {
    throw { step: name, error };
  }
}

async function run(args, workdir) {
  const api = common.loadPackage();
  const { protowrap, config, openiap } = api;
  await protowrap.init();
  config.ChecksumCheckFiles = true; // upload sends the SHA-256 hex checksum; download verifies it
  common.routePingPong(protowrap, { answerPings: false });
  common.patchConnect(protowrap);

  let steps = 0;
  const client = new openiap(args.url);
  client.allowconnectgiveup = true;

  await step("connect", async () => {
    await client.connect();
    const transport = client.client ? client.client.protocol : "";
    if (transport === "grpc") {
      // The package reports a gRPC connection after a fixed 100 ms whether or not it exists;
      // ask the channel itself.
      await new Promise((resolve, reject) => {
        client.client.grpc.waitForReady(Date.now() + GRPC_READY_MS, (e) => {
          if (e) reject(new Error(`gRPC channel to ${args.url} not ready within ${GRPC_READY_MS} ms: ${errorMessage(e)}`));
          else resolve();
        });
      });
    }
    const stream = client.client && client.client.stream;
    const remote = stream && stream.remoteAddress !== undefined ? `${stream.remoteAddress}:${stream.remotePort}` : null;
    return { url: args.url, protocol: transport, remote };
  });
  steps++;

  // The package closes and reconnects on its own; any disconnect from here on is a failure.
  let disconnected = null;
  client.on("disconnected", (_c, e) => { disconnected = e ? errorMessage(e) : "disconnected"; });
  const connectedGuard = () => {
    if (disconnected !== null) throw new Error(`connection lost: ${disconnected}`);
  };

  let jwt = "";
  await step("signin", async () => {
    const reply = await client.Signin({ username: args.username, password: args.password });
    if (!reply.jwt) throw new Error("signinreply carries no jwt");
    jwt = reply.jwt;
    return { username: reply.user.username, user_id: reply.user._id, jwt_len: reply.jwt.length };
  });
  steps++;

  for (let i = 0; i < args.pings; i++) {
    await step("ping", async () => {
      connectedGuard();
      // The same envelope as the package's own Ping(), whose promise never settles in a stock
      // package (pong is swallowed); common.routePingPong makes the pong settle it.
      const ping = api.Envelope.create({
        command: "ping",
        priority: 0,
        data: { type_url: TYPE_PREFIX + "PingRequest", value: api.PingRequest.encode(api.PingRequest.create()).finish() },
      });
      const [id, promise] = protowrap._RPC(client.client, ping);
      const pong = await promise;
      if (pong.command !== "pong") throw new Error(`ping ${id} answered with '${pong.command}', expected 'pong'`);
      if (pong.rid !== id) throw new Error(`pong rid '${pong.rid}', expected '${id}'`);
      return { index: i, id, rid: pong.rid };
    });
    steps++;
  }

  await step("unknown", async () => {
    connectedGuard();
    let reply;
    try {
      reply = await protowrap.RPC(client.client, { command: args.command });
    } catch (e) {
      // The package rejects with a ServerError built from the `error` reply's ErrorResponse;
      // a plain Error means something else (for example a disconnect).
      if (!e || e.name !== "ServerError") throw e;
      return { command: args.command, error: e.message };
    }
    throw new Error(`'${args.command}' was answered with '${reply.command}', expected 'error'`);
  });
  steps++;

  const content = common.genBytes(args.size, args.seed);
  const sha256 = common.sha256hex(content);
  const uploadName = `interop-${args.size}.bin`;
  const uploadPath = path.join(workdir, uploadName);
  fs.writeFileSync(uploadPath, content);

  let fileId = "";
  await step("upload", async () => {
    connectedGuard();
    const reply = await client.UploadFile({ filename: uploadPath, jwt });
    if (!reply.id) throw new Error("uploadreply carries no id");
    if (reply.filename !== uploadName) throw new Error(`uploadreply filename '${reply.filename}', expected '${uploadName}'`);
    fileId = reply.id;
    return { id: reply.id, filename: reply.filename, bytes: content.length, seed: args.seed, sha256 };
  });
  steps++;

  await step("download", async () => {
    connectedGuard();
    const folder = path.join(workdir, "download");
    fs.mkdirSync(folder);
    // With no filename the package downloads to a temporary name in `folder` and renames it
    // to the reply's filename; it verifies the beginstream checksum itself when one is sent.
    const result = await client.DownloadFile({ id: fileId, folder });
    const name = result.filename || "";
    if (name === "" || path.basename(name) !== name) throw new Error(`downloadreply filename '${name}' is not a plain file name`);
    const got = fs.readFileSync(path.join(folder, name));
    const serverChecksum = result.checksum ? String(result.checksum) : "";
    if (serverChecksum === "" && !args.allowMissingChecksum) throw new Error("beginstream carried no checksum");
    if (serverChecksum !== "" && serverChecksum.toLowerCase() !== sha256) {
      throw new Error(`beginstream checksum ${serverChecksum}, expected ${sha256}`);
    }
    const gotSha = common.sha256hex(got);
    if (got.length !== content.length) throw new Error(`downloaded ${got.length} bytes, expected ${content.length}`);
    const firstDiff = firstDifference(got, content);
    if (firstDiff !== -1) throw new Error(`downloaded content differs at byte ${firstDiff}`);
    return { id: fileId, filename: name, bytes: got.length, chunks: result.chunks, sha256: gotSha, server_checksum: serverChecksum };
  });
  steps++;

  client.Close();
  return steps;
}

function firstDifference(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

main();
