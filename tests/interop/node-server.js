#!/usr/bin/env node
"use strict";
// Test server built on @openiap/nodeapi 0.0.39. It listens on one transport on loopback and
// answers signin, ping, upload, download and (with `error`) anything else.
//
//   node node-server.js --transport socket|pipe|ws|grpc [--port N] [--pipe NAME] --data DIR
//                       --password PW [--username NAME] [--lifetime SECONDS]
//                       [--exit-on-stdin-eof]
//
// stdout (one line each, nothing else is written there):
//   listening <transport> <client-url>             once, when the listener is bound
//   {"event":"...", ...}                           one JSON line per connection event/request
// Package logs go to stderr. Exit codes: 0 stopped by signal/lifetime/stdin EOF,
// 1 listener failed, 2 usage error. See README.md.

const fs = require("fs");
const http = require("http");
const net = require("net");
const path = require("path");
const crypto = require("crypto");
const grpc = require("@grpc/grpc-js");
const common = require("./common");

const { LOOPBACK, EXIT, emitLine, emitJson, errorMessage } = common;

const SPEC = {
  transport: { kind: "string", required: true, choices: ["socket", "pipe", "ws", "grpc"] },
  port: { kind: "int", meta: "N", min: 1, max: 65535 },
  pipe: { kind: "string", meta: "NAME", default: "openiap-wire-interop" },
  data: { kind: "string", meta: "DIR", required: true },
  password: { kind: "string", meta: "PW", required: true },
  username: { kind: "string", meta: "NAME", default: "harness" },
  lifetime: { kind: "int", meta: "SECONDS", default: 300, min: 1, max: 86400 },
  "exit-on-stdin-eof": { kind: "flag" },
};

/** WebSocket path, as OpenFlow serves it. */
const WS_PATH = "/ws/v2";
const TYPE_PREFIX = "type.googleapis.com/openiap.";

function main() {
  common.routeConsoleToStderr();
  const args = common.cliArgs("node-server.js", SPEC, (a) => {
    if (a.transport !== "pipe" && a.port === undefined) {
      throw new common.UsageError(`--port is required for ${a.transport} (port 0 would become 80 in the package)`);
    }
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(a.pipe)) {
      throw new common.UsageError(`--pipe must be 1-64 characters of [A-Za-z0-9._-], found '${a.pipe}'`);
    }
  });
  run(args).catch((e) => {
    emitJson({ event: "fatal", error: errorMessage(e) });
    process.stderr.write(`node-server: ${errorMessage(e)}\n`);
    process.exit(EXIT.FAILED);
  });
}

async function run(args) {
  const api = common.loadPackage();
  const { protowrap, config } = api;
  await protowrap.init();
  config.ChecksumCheckFiles = true; // download beginstream carries the SHA-256 hex checksum
  config.DoPing = false; // the server never starts pings
  common.routePingPong(protowrap, { answerPings: true });

  fs.mkdirSync(args.data, { recursive: true });
  const state = new ServerState(api, args);

  const onClientConnected = (client) => {
    client.onMessage = (c, envelope) => state.onMessage(c, envelope);
    client.onDisconnected = (c, error) => {
      emitJson({ event: "disconnected", client: c.id, error: error ? errorMessage(error) : null });
    };
    emitJson({ event: "connected", client: client.id, transport: args.transport });
  };

  const listener = await listen(protowrap, args, onClientConnected);
  installShutdown(listener, args);
  emitLine(`listening ${args.transport} ${listener.url}`);
}

/** Per-process state: issued tokens and stored files. */
class ServerState {
  constructor(api, args) {
    this.api = api;
    this.args = args;
    this.tokens = new Map(); // jwt -> username
    this.files = new Map(); // id -> { id, filename, mimetype, path, bytes, sha256 }
  }

  /** The client's onMessage hook. Must stay synchronous until the upload stream is registered. */
  async onMessage(client, envelope) {
    const command = envelope.command || "";
    try {
      switch (command) {
        case "ping":
          emitJson({ event: "ping", client: client.id, id: envelope.id });
          return this.reply(envelope, "pong", "PingResponse", this.api.PingResponse, {});
        case "signin":
          return this.signin(client, envelope);
        case "upload":
          return await this.upload(client, envelope);
        case "download":
          return await this.download(client, envelope);
        default:
          return this.unknown(client, envelope);
      }
    } catch (e) {
      emitJson({ event: command || "empty-command", ok: false, client: client.id, error: errorMessage(e) });
      return this.error(envelope, errorMessage(e));
    }
  }

  signin(client, envelope) {
    const req = this.api.SigninRequest.decode(payloadBytes(envelope));
    let username;
    if (req.jwt) {
      username = this.tokens.get(req.jwt);
      if (username === undefined) throw new Error("Signin failed: unknown jwt");
    } else if (req.username === this.args.username && req.password === this.args.password) {
      username = req.username;
    } else {
      throw new Error(`Signin failed: bad username or password for '${req.username}'`);
    }
    // Not a real JWT: an opaque token the Rust side can also recognise (as in shared/vectors).
    const jwt = `harness-jwt.${Buffer.from(username).toString("base64url")}`;
    this.tokens.set(jwt, username);
    const user = { _id: `user-${username}`, name: username, username, email: "", roles: [] };
    if (!req.validateonly) {
      client.signedin = true;
      client.jwt = jwt;
      client.user = user;
    }
    emitJson({ event: "signin", ok: true, client: client.id, username, validateonly: !!req.validateonly, agent: req.agent });
    return this.reply(envelope, "signinreply", "SigninResponse", this.api.SigninResponse, { jwt, user, config: "{}" });
  }

  /**
   * Registers the stream for rid = envelope.id before the first await: beginstream, stream and
   * endstream follow the upload envelope at once and are routed by rid inside the package.
   */
  upload(client, envelope) {
    if (!client.signedin) throw new Error("Not signed in");
    const req = this.api.UploadRequest.decode(payloadBytes(envelope));
    const id = crypto.randomBytes(12).toString("hex");
    const file = path.join(this.args.data, id);
    const { protowrap, config } = this.api;
    const received = protowrap.ReceiveFileContent(client, envelope.id, file, config.SendFileHighWaterMark);
    const record = client.streams[envelope.id]; // set synchronously by ReceiveFileContent
    return received.then(async (r) => {
      if (!record || record.stat === undefined) throw new Error("endstream arrived without beginstream");
      const checksum = record.checksum ? String(record.checksum).toLowerCase() : "";
      const filename = safeName(req.filename) || id;
      const entry = { id, filename, mimetype: req.mimetype || "application/octet-stream", path: file, bytes: r.bytes, sha256: "" };
      // Hashes what was stored for the harness's upload event (and verifies the checksum, if sent).
      const check = async () => {
        const content = await fs.promises.readFile(file);
        const sha256 = common.sha256hex(content);
        if (checksum && checksum !== sha256) {
          throw new Error(`File checksum mismatch: beginstream says ${checksum}, received ${sha256}`);
        }
        Object.assign(entry, { bytes: content.length, sha256 });
        emitJson({
          event: "upload", ok: true, client: client.id, rid: envelope.id, id, filename,
          bytes: content.length, chunks: r.chunks, sha256, checksum, checksum_verified: checksum !== "",
        });
      };
      if (checksum) {
        await check();
      } else {
        // Nothing to verify: answer now; the hash for the event follows, outside the client's timing.
        setImmediate(() => check().catch((e) => {
          emitJson({ event: "upload", ok: false, client: client.id, rid: envelope.id, id, error: errorMessage(e) });
        }));
      }
      this.files.set(id, entry);
      return this.reply(envelope, "uploadreply", "UploadResponse", this.api.UploadResponse, { id, filename });
    }, (e) => {
      try { fs.rmSync(file, { force: true }); } catch (_) { /* best effort */ }
      throw e;
    });
  }

  async download(client, envelope) {
    if (!client.signedin) throw new Error("Not signed in");
    const req = this.api.DownloadRequest.decode(payloadBytes(envelope));
    let entry = req.id ? this.files.get(req.id) : undefined;
    if (!req.id && req.filename) {
      const wanted = path.basename(req.filename);
      entry = [...this.files.values()].find((f) => f.filename === wanted);
    }
    if (!entry) throw new Error(`File not found: id '${req.id}', filename '${req.filename}'`);
    const { protowrap, config } = this.api;
    const sent = await protowrap.sendFileContent(client, envelope.id, entry.path, config.SendFileHighWaterMark);
    emitJson({
      event: "download", ok: true, client: client.id, rid: envelope.id, id: entry.id, filename: entry.filename,
      bytes: sent.bytes, chunks: sent.chunks, sha256: entry.sha256,
    });
    return this.reply(envelope, "downloadreply", "DownloadResponse", this.api.DownloadResponse, {
      id: entry.id, filename: entry.filename, mimetype: entry.mimetype,
    });
  }

  /** OpenFlow answers an unknown request with `error`, and answers nothing when it carried a rid. */
  unknown(client, envelope) {
    const command = envelope.command || "";
    if (envelope.rid) {
      emitJson({ event: "ignored", client: client.id, command, rid: envelope.rid });
      return null;
    }
    emitJson({ event: "unknown", client: client.id, command, id: envelope.id });
    return this.error(envelope, `Unknown command '${command}'`);
  }

  reply(request, command, typeName, type, fields) {
    return {
      command,
      rid: request.id,
      data: { type_url: TYPE_PREFIX + typeName, value: Buffer.from(type.encode(type.fromPartial(fields)).finish()) },
    };
  }

  error(request, message) {
    return this.reply(request, "error", "ErrorResponse", this.api.ErrorResponse, { message, code: 0, stack: "" });
  }
}

/** The encoded payload of an Envelope, whether it came from ts-proto (socket, pipe, ws) or grpc-js. */
function payloadBytes(envelope) {
  const data = envelope.data;
  if (!data || data.value == null) return new Uint8Array(0);
  return data.value;
}

/** A reply filename: the last path component, or "" when nothing usable is left. */
function safeName(name) {
  const base = path.basename(String(name || "").replace(/\\/g, "/"));
  return base === "." || base === ".." ? "" : base;
}

/** Starts the package's listener bound to loopback and resolves once it is bound. */
async function listen(protowrap, args, onClientConnected) {
  switch (args.transport) {
    case "socket": {
      const result = withLoopbackListen(() => protowrap.serve("socket", onClientConnected, args.port, null, null, null, null));
      await boundOrError(result.server);
      return { url: `socket://${LOOPBACK}:${args.port}`, close: (cb) => result.server.close(cb) };
    }
    case "pipe": {
      const result = protowrap.serve("pipe", onClientConnected, null, args.pipe, null, null, null);
      await boundOrError(result.server);
      const file = `/tmp/CoreFxPipe_${args.pipe}`;
      return {
        url: `pipe://./${args.pipe}`,
        close: (cb) => result.server.close(() => { try { fs.rmSync(file, { force: true }); } catch (_) { /* gone */ } cb(); }),
      };
    }
    case "ws": {
      const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
      protowrap.serve("ws", onClientConnected, args.port, WS_PATH, null, null, server);
      server.listen(args.port, LOOPBACK);
      await boundOrError(server);
      return { url: `ws://${LOOPBACK}:${args.port}${WS_PATH}`, close: (cb) => { server.closeAllConnections(); server.close(cb); } };
    }
    case "grpc": {
      const { result, bound } = withLoopbackBind(() => protowrap.serve("grpc", onClientConnected, args.port, null, null, null, null));
      await bound;
      return { url: `grpc://${LOOPBACK}:${args.port}`, close: (cb) => result.server.tryShutdown(() => cb()) };
    }
    default:
      throw new Error(`unsupported transport ${args.transport}`);
  }
}

/** The package calls server.listen(port) (all interfaces); bind the numeric-port call to loopback. */
function withLoopbackListen(fn) {
  const original = net.Server.prototype.listen;
  net.Server.prototype.listen = function (...args) {
    if (typeof args[0] === "number") args.splice(1, 0, LOOPBACK);
    return original.apply(this, args);
  };
  try {
    return fn();
  } finally {
    net.Server.prototype.listen = original;
  }
}

/**
 * The package binds gRPC to 0.0.0.0 and ignores bind errors. Rewrite the address to loopback
 * and expose the bind outcome as a promise.
 */
function withLoopbackBind(fn) {
  const original = grpc.Server.prototype.bindAsync;
  let settle;
  const bound = new Promise((resolve, reject) => { settle = { resolve, reject }; });
  let called = false;
  grpc.Server.prototype.bindAsync = function (address, credentials, callback) {
    called = true;
    const local = String(address).replace(/^0\.0\.0\.0:/, `${LOOPBACK}:`);
    return original.call(this, local, credentials, (error, port) => {
      if (error) settle.reject(new Error(`gRPC bind to ${local} failed: ${errorMessage(error)}`));
      else settle.resolve(port);
      if (callback) callback(error, port);
    });
  };
  let result;
  try {
    result = fn();
  } finally {
    grpc.Server.prototype.bindAsync = original;
  }
  if (!called) settle.reject(new Error("the package did not bind a gRPC server"));
  return { result, bound };
}

function boundOrError(server) {
  return new Promise((resolve, reject) => {
    if (server.listening) return resolve();
    const onError = (e) => { server.off("listening", onListening); reject(new Error(`listen failed: ${errorMessage(e)}`)); };
    const onListening = () => { server.off("error", onError); resolve(); };
    server.once("error", onError);
    server.once("listening", onListening);
  });
}

/** Stops on SIGTERM/SIGINT, after --lifetime seconds, or on stdin EOF when asked. */
function installShutdown(listener, args) {
  let stopping = false;
  const stop = (reason) => {
    if (stopping) return;
    stopping = true;
    emitJson({ event: "exit", reason });
    const force = setTimeout(() => process.exit(EXIT.OK), 2000);
    force.unref();
    listener.close(() => process.exit(EXIT.OK));
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  setTimeout(() => stop("lifetime"), args.lifetime * 1000);
  if (args.exitOnStdinEof) {
    process.stdin.on("end", () => stop("stdin-eof"));
    process.stdin.on("error", () => stop("stdin-eof"));
    process.stdin.resume();
  }
  process.on("uncaughtException", (e) => {
    emitJson({ event: "internal-error", error: errorMessage(e) });
    process.stderr.write(`node-server: uncaught ${e && e.stack ? e.stack : e}\n`);
  });
  process.on("unhandledRejection", (e) => {
    emitJson({ event: "internal-error", error: errorMessage(e) });
  });
}

main();
