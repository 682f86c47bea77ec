// gRPC clients for tests: the Echo and Admin services of test/fixtures/grpc/echo.proto, over grpc-js.
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

export interface Note {
  text: string;
  count?: number;
  delayMs?: number;
  failWith?: number;
}

const PROTO = new URL("../fixtures/grpc/echo.proto", import.meta.url).pathname;
const definition = protoLoader.loadSync(PROTO, { keepCase: false, defaults: true });
const loaded = grpc.loadPackageDefinition(definition) as unknown as {
  mtlsd: { test: { Echo: grpc.ServiceClientConstructor; Admin: grpc.ServiceClientConstructor } };
};

export type EchoClient = grpc.Client & {
  Unary: UnaryMethod;
  Stream(note: Note, metadata?: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<Note>;
  Collect(
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, reply?: Note) => void,
  ): grpc.ClientWritableStream<Note>;
  Chat(metadata?: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<Note, Note>;
  Hang: UnaryMethod;
};
type UnaryMethod = (
  note: Note,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, reply?: Note) => void,
) => grpc.ClientUnaryCall;

export interface UnaryResult {
  error: grpc.ServiceError | null;
  reply?: Note;
  trailers?: grpc.Metadata;
  headers?: grpc.Metadata;
}

/**
 * A client of the Echo service at `target` (`host:port`) without TLS, as an app next to its sidecar is one.
 * `options` are grpc-js channel options (e.g. `grpc.enable_http_proxy`).
 */
export function echoClient(target: string, options: grpc.ChannelOptions = {}): EchoClient {
  return new loaded.mtlsd.test.Echo(
    target,
    grpc.credentials.createInsecure(),
    options,
  ) as unknown as EchoClient;
}

export function adminClient(target: string): grpc.Client & { Reset: UnaryMethod } {
  return new loaded.mtlsd.test.Admin(target, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    Reset: UnaryMethod;
  };
}

/** One unary call, resolved with its error or reply and the trailers and headers it carried. */
export function unary(
  method: UnaryMethod,
  client: grpc.Client,
  note: Note,
  options: grpc.CallOptions = {},
): Promise<UnaryResult> {
  return new Promise((resolve) => {
    const result: UnaryResult = { error: null };
    const call = method.call(client, note, new grpc.Metadata(), options, (error, reply) => {
      result.error = error;
      if (reply) result.reply = reply;
      // The status (and its trailers) arrives after the callback for a failed call: wait a tick for it.
      setImmediate(() => resolve(result));
    });
    call.on("metadata", (headers: grpc.Metadata) => {
      result.headers = headers;
    });
    call.on("status", (status: grpc.StatusObject) => {
      result.trailers = status.metadata;
    });
  });
}

export { grpc };
