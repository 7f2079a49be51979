"use strict";
// Helpers shared by node-server.js and node-client.js: argument parsing, the stdout line
// protocol, the deterministic content generator, and the small patches that make
// @openiap/nodeapi 0.0.39 usable as a test peer. See README.md for the why of each patch.

const crypto = require("crypto");
const net = require("net");
const path = require("path");
const util = require("util");

/** The only host the harness binds to or prints in a URL. */
const LOOPBACK = "127.0.0.1";

/** Exit codes shared by both scripts (documented in README.md). */
const EXIT = Object.freeze({ OK: 0, FAILED: 1, USAGE: 2, TIMEOUT: 3 });

class UsageError extends Error {
  constructor(message) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * Parses `--name value` / `--flag` arguments against a spec.
 * spec: { name: { kind: "string" | "int" | "flag", meta?, default?, required?, min?, max?, choices? } }
 * (meta: the value's placeholder in the usage line.)
 * Returns an object keyed by the camelCased name. Throws UsageError on anything unexpected.
 */
function parseArgs(argv, spec) {
  const out = {};
  for (const [name, s] of Object.entries(spec)) {
    out[camel(name)] = s.kind === "flag" ? false : s.default;
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) throw new UsageError(`unexpected argument '${arg}'`);
    const name = arg.slice(2);
    const s = spec[name];
    if (!s) throw new UsageError(`unknown option '${arg}'`);
    if (s.kind === "flag") {
      out[camel(name)] = true;
      continue;
    }
    if (i + 1 >= argv.length) throw new UsageError(`option '${arg}' needs a value`);
    const raw = argv[++i];
    let value = raw;
    if (s.kind === "int") {
      if (!/^[0-9]+$/.test(raw)) throw new UsageError(`option '${arg}' wants a non-negative integer, found '${raw}'`);
      value = Number(raw);
      if (!Number.isSafeInteger(value)) throw new UsageError(`option '${arg}' is too large: ${raw}`);
      if (s.min !== undefined && value < s.min) throw new UsageError(`option '${arg}' is ${value}, minimum ${s.min}`);
      if (s.max !== undefined && value > s.max) throw new UsageError(`option '${arg}' is ${value}, maximum ${s.max}`);
    }
    if (s.choices && !s.choices.includes(value)) {
      throw new UsageError(`option '${arg}' must be one of ${s.choices.join(", ")}, found '${raw}'`);
    }
    out[camel(name)] = value;
  }
  for (const [name, s] of Object.entries(spec)) {
    if (s.required && (out[camel(name)] === undefined || out[camel(name)] === "")) {
      throw new UsageError(`option '--${name}' is required`);
    }
  }
  return out;
}

/**
 * The usage line of `script` from its spec, options in spec order: a required option bare, any
 * other in brackets; a value shown as its `meta` placeholder, or its choices joined by "|".
 */
function usageLine(script, spec) {
  const parts = Object.entries(spec).map(([name, s]) => {
    const value = s.kind === "flag" ? "" : ` ${s.choices ? s.choices.join("|") : s.meta}`;
    return s.required ? `--${name}${value}` : `[--${name}${value}]`;
  });
  return `usage: node ${script} ${parts.join(" ")}`;
}

/**
 * The command line of harness script `script` (say "node-client.js"): parseArgs(process.argv)
 * against `spec`, then `check(args)` for the rules a spec cannot state (it throws UsageError).
 * On a UsageError from either, writes "<script name>: <message>" and the usage line
 * (usageLine) to stderr and exits with EXIT.USAGE.
 */
function cliArgs(script, spec, check = () => {}) {
  try {
    const args = parseArgs(process.argv.slice(2), spec);
    check(args);
    return args;
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`${path.basename(script, ".js")}: ${e.message}\n${usageLine(script, spec)}\n`);
      process.exit(EXIT.USAGE);
    }
    throw e;
  }
}

function camel(name) {
  return name.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
}

/**
 * Deterministic payload generator shared with the Rust side (shared/vectors/README.md):
 * state = seed XOR 0x9E3779B9 as u32 (1 if that is 0); each xorshift32 step appends the new
 * state as 4 little-endian bytes; the result is truncated to `size`.
 */
function genBytes(size, seed) {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`size must be a non-negative integer, found ${size}`);
  const out = Buffer.alloc(size);
  let x = ((seed >>> 0) ^ 0x9e3779b9) >>> 0;
  if (x === 0) x = 1;
  const word = Buffer.alloc(4);
  for (let off = 0; off < size; off += 4) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    word.writeUInt32LE(x, 0);
    word.copy(out, off, 0, Math.min(4, size - off));
  }
  return out;
}

function sha256hex(buf) {
  return crypto.createHash("sha256").update(buf).digest("hex");
}

/** Writes one protocol line to stdout. Only these functions write to stdout. */
function emitLine(text) {
  process.stdout.write(text + "\n");
}

function emitJson(obj) {
  emitLine(JSON.stringify(obj));
}

/**
 * The package logs with console.log (colour codes included). Send every console method to
 * stderr so stdout carries only the harness protocol lines.
 */
function routeConsoleToStderr() {
  const toErr = (...args) => process.stderr.write(util.format(...args) + "\n");
  console.log = toErr;
  console.info = toErr;
  console.warn = toErr;
  console.debug = toErr;
}

/**
 * Loads the package after clearing the environment variables it reads on its own
 * (apiurl, grpcapiurl, wsapiurl, jwt), so a developer's shell cannot change the run.
 */
function loadPackage() {
  for (const name of ["apiurl", "grpcapiurl", "wsapiurl", "jwt"]) delete process.env[name];
  const api = require("@openiap/nodeapi");
  return api;
}

/**
 * Wraps protowrap.IsPendingReply, which consumes every ping and pong before dispatch.
 * - A pong whose rid names a pending request now settles that request, like any reply.
 * - With answerPings, a ping is passed on to the client's onMessage handler after the
 *   package has refreshed its heartbeat, so the handler can answer it.
 * Everything else goes to the package unchanged.
 */
function routePingPong(protowrap, { answerPings }) {
  const original = protowrap.IsPendingReply;
  if (original.__harnessWrapped) return;
  const wrapped = function (client, envelope) {
    const command = envelope && envelope.command;
    if (command === "pong" && envelope.rid && client.replies && client.replies[envelope.rid]) {
      const pending = client.replies[envelope.rid];
      delete client.replies[envelope.rid];
      original.call(this, client, envelope); // heartbeat bookkeeping; consumes the pong
      pending.resolve(envelope);
      return true;
    }
    if (command === "ping" && answerPings) {
      original.call(this, client, envelope); // heartbeat bookkeeping
      return false; // dispatch to onMessage
    }
    return original.call(this, client, envelope);
  };
  wrapped.__harnessWrapped = true;
  protowrap.IsPendingReply = wrapped;
}

/**
 * Runs protowrap.connect while recording every socket it opens with net.createConnection.
 * For socket:// URLs the package opens a second, stray connection to the host name
 * "HOST:PORT" (a missing `else`), with no error listener: its lookup failure would kill the
 * process. Every socket that is not the client's real stream gets a listener and is destroyed.
 */
function connectWithoutStraySockets(protowrap, url) {
  const original = net.createConnection;
  const opened = [];
  net.createConnection = function (...args) {
    const socket = original.apply(this, args);
    opened.push(socket);
    return socket;
  };
  let client;
  try {
    client = protowrap.__harnessOriginalConnect.call(protowrap, url);
  } finally {
    net.createConnection = original;
  }
  for (const socket of opened) {
    if (client && socket === client.stream) continue;
    socket.on("error", () => {});
    socket.destroy();
  }
  return client;
}

/** Makes every later protowrap.connect call (the openiap class calls it on each reconnect) safe. */
function patchConnect(protowrap) {
  if (protowrap.__harnessOriginalConnect) return;
  protowrap.__harnessOriginalConnect = protowrap.connect;
  protowrap.connect = function (url) {
    return connectWithoutStraySockets(protowrap, url);
  };
}

function errorMessage(e) {
  if (e && typeof e === "object" && typeof e.message === "string") return e.message;
  return String(e);
}

module.exports = {
  LOOPBACK,
  EXIT,
  UsageError,
  parseArgs,
  usageLine,
  cliArgs,
  genBytes,
  sha256hex,
  emitLine,
  emitJson,
  routeConsoleToStderr,
  loadPackage,
  routePingPong,
  patchConnect,
  errorMessage,
};
