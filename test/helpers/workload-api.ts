// A real SPIFFE Workload API server for tests: grpc-js on a unix socket, from the same proto as mtlsd's client.
import { createPrivateKey, X509Certificate } from "node:crypto";
import { rm } from "node:fs/promises";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { X509SvidMessage, X509SvidResponse } from "../../src/credentials/index.ts";

const PROTO_FILE = new URL("../../proto/workload.proto", import.meta.url).pathname;

/** One identity the server hands out, as PEM (the server sends it as DER, as the spec says). */
export interface SvidPems {
  spiffeId: string;
  /** Leaf, then intermediates. */
  chainPem: string;
  keyPem: string;
  /** Roots of the SVID's trust domain. */
  bundlePem: string;
}

/** The full state a message carries: SVIDs, and the federated bundles by trust domain name. */
export interface WorkloadState {
  svids: SvidPems[];
  federated?: Record<string, string>;
}

const PEM_BLOCK = /-----BEGIN [A-Z0-9 ]+-----[\s\S]+?-----END [A-Z0-9 ]+-----/g;

/** Concatenated DER of every certificate in a PEM text. */
export function pemToDer(pem: string): Buffer {
  return Buffer.concat((pem.match(PEM_BLOCK) ?? []).map((block) => new X509Certificate(block).raw));
}

/** The wire message for a state, as the SPIRE agent would send it. */
export function messageFor(state: WorkloadState): X509SvidResponse {
  return {
    svids: state.svids.map(
      (svid): X509SvidMessage => ({
        spiffe_id: svid.spiffeId,
        x509_svid: pemToDer(svid.chainPem),
        x509_svid_key: createPrivateKey(svid.keyPem).export({ type: "pkcs8", format: "der" }),
        bundle: pemToDer(svid.bundlePem),
        hint: "",
      }),
    ),
    crl: [],
    federated_bundles: Object.fromEntries(
      Object.entries(state.federated ?? {}).map(([domain, pem]) => [`spiffe://${domain}`, pemToDer(pem)]),
    ),
  };
}

type Stream = grpc.ServerWritableStream<object, X509SvidResponse>;

/**
 * Behaves like a SPIRE agent's Workload API toward one workload: refuses calls without the
 * `workload.spiffe.io: true` metadata (InvalidArgument), answers PermissionDenied while it has no identity
 * for the caller, sends the current state at once and again on every push. It can die (every stream cut,
 * the socket closed) and come back on the same socket path.
 */
export class WorkloadApiServer {
  readonly path: string;
  /** The endpoint as mtlsd's config (or $SPIFFE_ENDPOINT_SOCKET) names it. */
  readonly socket: string;
  /** FetchX509SVID calls received, refused ones included. */
  calls = 0;
  /** Messages written to streams. */
  sent = 0;
  /** Answer every call with this status instead (InvalidArgument, say), when set. */
  refuseWith: grpc.status | undefined;
  /** Accept calls and send nothing, like an agent stuck attesting. */
  silent = false;
  #message: X509SvidResponse | undefined;
  #server: grpc.Server | undefined;
  readonly #streams = new Set<Stream>();

  private constructor(path: string) {
    this.path = path;
    this.socket = `unix://${path}`;
  }

  /** Listens on `path`; with no state, callers are told PermissionDenied until the first push. */
  static async start(path: string, state?: WorkloadState): Promise<WorkloadApiServer> {
    const server = new WorkloadApiServer(path);
    if (state) server.#message = messageFor(state);
    await server.#listen();
    return server;
  }

  /** Open streams now. */
  get streams(): number {
    return this.#streams.size;
  }

  /** A new full state, sent to every open stream (a rotation, a bundle change). */
  push(state: WorkloadState): void {
    this.pushMessage(messageFor(state));
  }

  /** A message as given, however wrong (a bad SVID). */
  pushMessage(message: X509SvidResponse): void {
    this.#message = message;
    for (const stream of this.#streams) {
      stream.write(message);
      this.sent++;
    }
  }

  /** Ends every open stream cleanly (status OK), as an agent shutting down gracefully does. */
  endStreams(): void {
    for (const stream of this.#streams) stream.end();
    this.#streams.clear();
  }

  /** Dies: every stream cut, the socket gone, as when the agent is killed. */
  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (!server) return;
    server.forceShutdown();
    this.#streams.clear();
    await rm(this.path, { force: true });
  }

  /** Comes back on the same socket, with the state it had. */
  async restart(): Promise<void> {
    await this.#listen();
  }

  async #listen(): Promise<void> {
    await rm(this.path, { force: true });
    const definition = protoLoader.loadSync(PROTO_FILE, { keepCase: true, defaults: true });
    const service = (
      grpc.loadPackageDefinition(definition).SpiffeWorkloadAPI as grpc.ServiceClientConstructor
    ).service;
    const server = new grpc.Server();
    server.addService(service, { FetchX509SVID: (stream: Stream) => this.#fetch(stream) });
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(this.socket, grpc.ServerCredentials.createInsecure(), (error) =>
        error ? reject(error) : resolve(),
      );
    });
    this.#server = server;
  }

  #fetch(stream: Stream): void {
    this.calls++;
    // grpc-js ends a server stream with a status when its "error" event carries one.
    if (stream.metadata.get("workload.spiffe.io")[0] !== "true") {
      stream.emit("error", {
        code: grpc.status.INVALID_ARGUMENT,
        details: "security header missing from request",
      });
      return;
    }
    if (this.refuseWith !== undefined) {
      stream.emit("error", { code: this.refuseWith, details: "refused by the test server" });
      return;
    }
    if (this.silent) {
      this.#streams.add(stream);
      stream.on("cancelled", () => this.#streams.delete(stream));
      return;
    }
    if (!this.#message) {
      stream.emit("error", { code: grpc.status.PERMISSION_DENIED, details: "no identity issued" });
      return;
    }
    this.#streams.add(stream);
    stream.on("cancelled", () => this.#streams.delete(stream));
    stream.on("close", () => this.#streams.delete(stream));
    stream.write(this.#message);
    this.sent++;
  }
}
