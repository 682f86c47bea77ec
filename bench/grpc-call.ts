// The gRPC call the benchmark measures: Echo/Unary of test/fixtures/grpc/echo.proto, framed by hand and checked with grpc-js.
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

export const UNARY_PATH = "/mtlsd.test.Echo/Unary";

/** The request headers of a gRPC call, as every gRPC client sends them. */
export const GRPC_HEADERS = { "content-type": "application/grpc", te: "trailers" } as const;

/**
 * One length-prefixed gRPC message (flag byte 0 = uncompressed, then the length, big-endian) holding the
 * protobuf `Note { string text = 1; }`: field 1 with wire type 2 is the tag byte 0x0a, then a varint length.
 */
export function framedNote(text: string): Buffer {
  const bytes = Buffer.from(text, "utf8");
  const length: number[] = [];
  for (let rest = bytes.length; ; rest >>>= 7) {
    if (rest < 0x80) {
      length.push(rest);
      break;
    }
    length.push((rest & 0x7f) | 0x80);
  }
  const message = Buffer.concat([Buffer.from([0x0a, ...length]), bytes]);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

/** The text of the benchmark's Note: `bytes` of it, so the framed call carries about that much each way. */
export function noteText(bytes: number): string {
  return "x".repeat(bytes);
}

type EchoClient = grpc.Client & {
  Unary(
    note: { text: string },
    callback: (error: grpc.ServiceError | null, reply?: { text: string }) => void,
  ): grpc.ClientUnaryCall;
};

/**
 * One call with a real gRPC client before a scenario is measured: a load generator that only sees HTTP
 * statuses would count a gRPC error (HTTP 200 with a non-zero `grpc-status`) as a success.
 */
export async function verifyUnary(target: string, text: string): Promise<void> {
  const proto = new URL("../test/fixtures/grpc/echo.proto", import.meta.url).pathname;
  const loaded = grpc.loadPackageDefinition(protoLoader.loadSync(proto, { defaults: true })) as unknown as {
    mtlsd: { test: { Echo: grpc.ServiceClientConstructor } };
  };
  const client = new loaded.mtlsd.test.Echo(
    target,
    grpc.credentials.createInsecure(),
  ) as unknown as EchoClient;
  try {
    const reply = await new Promise<{ text: string } | undefined>((resolve, reject) =>
      client.Unary({ text }, (error, answer) => (error ? reject(error) : resolve(answer))),
    );
    if (reply?.text !== text) {
      throw new Error(`the gRPC echo at ${target} answered a different note (${reply?.text.length} bytes)`);
    }
  } catch (error) {
    throw new Error(`a gRPC call through ${target} failed: ${(error as Error).message}`);
  } finally {
    client.close();
  }
}
