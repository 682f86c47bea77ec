// A tiny DNS server on loopback (UDP) whose A records a test sets and changes: names resolve as the test says.
import dgram from "node:dgram";
import net from "node:net";

export interface TestDnsServer {
  /** `127.0.0.1:<port>`, as `dns.setServers` and `$MTLSD_DNS_SERVERS` take it. */
  address: string;
  /** Sets the A records of `name` (lowercase, no trailing dot); an empty list makes it NXDOMAIN. */
  set(name: string, addresses: readonly string[]): void;
  /** How many A queries each name got. */
  queries(name: string): number;
  close(): Promise<void>;
}

const TYPE_A = 1;
const CLASS_IN = 1;

/**
 * Answers A queries from its table, AAAA queries for a known name with no records (NOERROR, empty), anything
 * else with NXDOMAIN: the answers an authoritative server gives, as RFC 1035 §4.1 lays them out.
 */
export async function startDnsServer(): Promise<TestDnsServer> {
  const records = new Map<string, string[]>();
  const counts = new Map<string, number>();
  const socket = dgram.createSocket("udp4");
  socket.on("message", (query, peer) => {
    const question = readQuestion(query);
    if (!question) return;
    const addresses = records.get(question.name) ?? [];
    if (question.type === TYPE_A) counts.set(question.name, (counts.get(question.name) ?? 0) + 1);
    const answers = question.type === TYPE_A ? addresses : [];
    const rcode = addresses.length > 0 ? 0 : 3;
    socket.send(response(query, question.end, rcode, answers), peer.port, peer.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  return {
    address: `127.0.0.1:${socket.address().port}`,
    set(name, addresses) {
      for (const address of addresses) if (!net.isIPv4(address)) throw new Error(`${address} is not IPv4`);
      records.set(name, [...addresses]);
    },
    queries: (name) => counts.get(name) ?? 0,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

/** The first question: its name (labels joined by dots, lowercased), type, and where it ends. */
function readQuestion(message: Buffer): { name: string; type: number; end: number } | undefined {
  if (message.length < 12 || message.readUInt16BE(4) < 1) return undefined;
  const labels: string[] = [];
  let offset = 12;
  while (offset < message.length) {
    const length = message[offset]!;
    offset++;
    if (length === 0) break;
    labels.push(
      message
        .subarray(offset, offset + length)
        .toString("ascii")
        .toLowerCase(),
    );
    offset += length;
  }
  if (offset + 4 > message.length) return undefined;
  return { name: labels.join("."), type: message.readUInt16BE(offset), end: offset + 4 };
}

function response(query: Buffer, questionEnd: number, rcode: number, addresses: readonly string[]): Buffer {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(query.readUInt16BE(0), 0); // the query's ID
  // QR (a response), AA (authoritative), RD copied from the query, RA, and the response code.
  header.writeUInt16BE(0x8400 | (query.readUInt16BE(2) & 0x0100) | 0x0080 | rcode, 2);
  header.writeUInt16BE(1, 4); // one question, echoed
  header.writeUInt16BE(addresses.length, 6);
  const answers = addresses.map((address) => {
    const record = Buffer.alloc(16);
    record.writeUInt16BE(0xc00c, 0); // the name: a pointer to the question's
    record.writeUInt16BE(TYPE_A, 2);
    record.writeUInt16BE(CLASS_IN, 4);
    record.writeUInt32BE(1, 6); // TTL: 1 s, mtlsd asks again on its own schedule anyway
    record.writeUInt16BE(4, 10);
    address.split(".").forEach((octet, index) => {
      record[12 + index] = Number(octet);
    });
    return record;
  });
  return Buffer.concat([header, query.subarray(12, questionEnd), ...answers]);
}
