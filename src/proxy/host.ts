// The Host header (and HTTP/2 `:authority`) a request may carry: RFC 9112 §3.2 with RFC 3986's authority grammar.
import { isIPv6 } from "node:net";

// RFC 3986 §3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims ). `%` is checked separately.
const REG_NAME = /^(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+$/;
// IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
const IP_FUTURE = /^v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+$/;
const PORT = /^[0-9]{0,5}$/;

/**
 * What is wrong with a Host value (`uri-host [ ":" port ]`), or undefined when it is well-formed. An http(s) URI
 * with an empty host is invalid (RFC 9110 §4.2.1), so empty is refused too; userinfo (`@`), a path, whitespace and
 * every character outside reg-name / IP-literal / IPv4address are refused (RFC 9112 §3.2: a 400 for an invalid Host).
 */
export function hostProblem(value: string): string | undefined {
  if (value === "") return "the Host header is empty";
  let host = value;
  let port: string | undefined;
  if (value.charCodeAt(0) === 0x5b /* "[" */) {
    const close = value.indexOf("]");
    if (close === -1) return `the Host ${quote(value)} opens an IP literal "[" it never closes`;
    const literal = value.slice(1, close);
    if (!isIPv6(literal) && !IP_FUTURE.test(literal)) {
      return `the Host ${quote(value)} is not a valid IP literal`;
    }
    const rest = value.slice(close + 1);
    if (rest !== "") {
      if (rest.charCodeAt(0) !== 0x3a /* ":" */)
        return `the Host ${quote(value)} has text after its IP literal`;
      port = rest.slice(1);
    }
    host = "";
  } else {
    const colon = value.lastIndexOf(":");
    if (colon !== -1) {
      host = value.slice(0, colon);
      port = value.slice(colon + 1);
    }
    if (host === "") return `the Host ${quote(value)} has no host name`;
    if (!REG_NAME.test(host)) return `the Host ${quote(value)} ${describeBadCharacter(host)}`;
  }
  if (port !== undefined && (!PORT.test(port) || Number(port) > 65535)) {
    return `the Host ${quote(value)} has a port that is not a number from 0 to 65535`;
  }
  return undefined;
}

/** The host part, lowercased, and the port (80 when absent: http), for comparing two authorities. */
export function authorityKey(value: string): string {
  let host = value;
  let port = "";
  const close = value.startsWith("[") ? value.indexOf("]") : -1;
  const colon = value.lastIndexOf(":");
  if (colon > close) {
    host = value.slice(0, colon);
    port = value.slice(colon + 1);
  }
  return `${host.toLowerCase()}:${port === "" ? "80" : String(Number(port))}`;
}

function describeBadCharacter(host: string): string {
  for (const [name, pattern] of [
    ["userinfo (@)", /@/],
    ["a path (/)", /[/?#\\]/],
    ["whitespace", /\s/],
    ["a malformed %-escape", /%(?![0-9A-Fa-f]{2})/],
  ] as const) {
    if (pattern.test(host)) return `has ${name}`;
  }
  return "has a character outside RFC 3986's reg-name (letters, digits, -._~!$&'()*+,;= and %XX)";
}

/** JSON-quoted and cut short: the value came from a client and goes into a log line and a response. */
function quote(value: string): string {
  return JSON.stringify(value.length > 200 ? `${value.slice(0, 200)}…` : value);
}
