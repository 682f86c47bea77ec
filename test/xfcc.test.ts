// Checks XFCC formatting, parsing and modes against Envoy's own test vectors and documented examples.
import t from "tap";
import {
  applyXfccMode,
  formatXfccElement,
  isWellFormedXfcc,
  parseXfcc,
  type XfccElement,
  type XfccFields,
} from "../src/inbound/xfcc.ts";

// The fixture of Envoy's test/common/http/conn_manager_utility_test.cc (MtlsSetForwardClientCert and friends).
const envoyLocalUris = ["test://foo.com/be", "http://backend.foo.com"];
const envoyPeerUris = ["test://foo.com/fe", "http://frontend.foo.com"];
const envoyPem = "%3D%3Dabc%0Ade%3D";
const envoyFields: XfccFields = {
  by: envoyLocalUris,
  hash: "abcdefg",
  uris: envoyPeerUris,
  dns: ["www.example.com"],
  cert: envoyPem,
  chain: `${envoyPem}%3D%3Dlmn%0Aop%3D`,
};
const envoySetForward =
  "By=test://foo.com/be;By=http://backend.foo.com;Hash=abcdefg;URI=test://foo.com/fe;URI=http://frontend.foo.com;" +
  'Cert="%3D%3Dabc%0Ade%3D";Chain="%3D%3Dabc%0Ade%3D%3D%3Dlmn%0Aop%3D";DNS=www.example.com';

/** Parsed elements as plain [key, value] lists, for compact expectations. */
function pairsOf(header: string): [string, string][][] {
  return parseXfcc(header).map((element: XfccElement) => element.map(({ key, value }) => [key, value]));
}

t.test("Envoy MtlsSetForwardClientCert: append_forward without an incoming header sets ours", async (t) => {
  const ours = formatXfccElement(envoyFields, ["URI", "Cert", "Chain", "DNS"]);
  t.equal(ours, envoySetForward);
  t.equal(applyXfccMode("append_forward", undefined, ours), envoySetForward);
});

t.test(
  "Envoy MtlsAppendForwardClientCert: append_forward appends ours after the incoming element",
  async (t) => {
    const incoming =
      "By=test://foo.com/fe;By=http://frontend.foo.com;URI=test://bar.com/be;DNS=test.com;DNS=test.com";
    const ours = formatXfccElement(envoyFields, ["URI", "Cert", "Chain", "DNS"]);
    t.equal(applyXfccMode("append_forward", incoming, ours), `${incoming},${envoySetForward}`);
  },
);

t.test("Envoy MtlsAppendForwardClientCertLocalSanEmpty: no local URI SAN means no By pair", async (t) => {
  const ours = formatXfccElement({ by: [], hash: "abcdefg", uris: ["test://foo.com/fe"], dns: [] }, ["URI"]);
  t.equal(ours, "Hash=abcdefg;URI=test://foo.com/fe");
  t.equal(
    applyXfccMode("append_forward", "By=test://foo.com/fe;Hash=xyz;URI=test://bar.com/be", ours),
    "By=test://foo.com/fe;Hash=xyz;URI=test://bar.com/be,Hash=abcdefg;URI=test://foo.com/fe",
  );
});

t.test("Envoy MtlsSanitizeSetClientCert: sanitize_set replaces the incoming header with ours", async (t) => {
  const ours = formatXfccElement(
    {
      by: envoyLocalUris,
      hash: "abcdefg",
      subject: "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=test.lyft.com",
      uris: envoyPeerUris,
      dns: [],
      cert: "abcde=",
      chain: "abcde=lmnop=",
    },
    ["Subject", "URI", "Cert", "Chain"],
  );
  t.equal(
    applyXfccMode("sanitize_set", "By=test://foo.com/fe;URI=test://bar.com/be", ours),
    "By=test://foo.com/be;By=http://backend.foo.com;Hash=abcdefg;" +
      'Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=test.lyft.com";' +
      'URI=test://foo.com/fe;URI=http://frontend.foo.com;Cert="abcde=";Chain="abcde=lmnop="',
  );
});

t.test("Envoy MtlsSanitizeSetClientCertPeerSanEmpty: a peer without URI SANs gets a bare URI=", async (t) => {
  const ours = formatXfccElement(
    {
      by: ["test://foo.com/be"],
      hash: "abcdefg",
      subject: "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=test.lyft.com",
      uris: [],
      dns: [],
    },
    ["Subject", "URI"],
  );
  t.equal(
    applyXfccMode("sanitize_set", "By=test://foo.com/fe;URI=test://bar.com/be", ours),
    'By=test://foo.com/be;Hash=abcdefg;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=test.lyft.com";URI=',
  );
});

t.test("Envoy's single-URI vector: details URI, Cert, DNS", async (t) => {
  const ours = formatXfccElement(
    {
      by: ["test://foo.com/be"],
      hash: "abcdefg",
      uris: ["test://foo.com/fe"],
      dns: ["www.example.com"],
      cert: envoyPem,
    },
    ["URI", "Cert", "DNS"],
  );
  t.equal(
    ours,
    'By=test://foo.com/be;Hash=abcdefg;URI=test://foo.com/fe;Cert="%3D%3Dabc%0Ade%3D";DNS=www.example.com',
  );
});

t.test("Envoy MtlsSanitizeClientCert: sanitize removes the header on mTLS", async (t) => {
  t.equal(applyXfccMode("sanitize", "By=test;URI=abc;DNS=example.com", "Hash=abc"), undefined);
});

t.test(
  "Envoy MtlsForwardOnlyClientCert: forward_only passes the incoming header through on mTLS",
  async (t) => {
    const incoming = "By=test://foo.com/fe;URI=test://bar.com/be;DNS=example.com";
    t.equal(applyXfccMode("forward_only", incoming, "Hash=abc"), incoming);
  },
);

t.test(
  "Envoy TlsSanitizeClientCertWhenForward: without a client cert every mode removes the header",
  async (t) => {
    for (const mode of ["sanitize_set", "append_forward", "sanitize", "forward_only"] as const) {
      t.equal(applyXfccMode(mode, "By=test;URI=abc", null), undefined, mode);
      t.equal(applyXfccMode(mode, undefined, null), undefined, mode);
    }
  },
);

t.test(
  "Envoy's xfcc_value vector: a quoted value keeps its delimiters and unescapes its quote",
  async (t) => {
    t.same(pairsOf('By=test;URI="a,b,c;\\"e;f;g=x";DNS=example.com'), [
      [
        ["By", "test"],
        ["URI", 'a,b,c;"e;f;g=x'],
        ["DNS", "example.com"],
      ],
    ]);
  },
);

t.test("Envoy's xfcc_value vector: the same value parses in the second of two elements", async (t) => {
  t.same(pairsOf('By=test;DNS=example.com,By=test;URI="a,b,c;\\"e;f;g=x";DNS=example.com'), [
    [
      ["By", "test"],
      ["DNS", "example.com"],
    ],
    [
      ["By", "test"],
      ["URI", 'a,b,c;"e;f;g=x'],
      ["DNS", "example.com"],
    ],
  ]);
});

t.test("Envoy's xfcc_value vectors: escaped backslashes and quotes unescape", async (t) => {
  t.equal(parseXfcc('By=test;URI="\\\\";DNS=example.com')[0]![1]!.value, "\\");
  t.equal(parseXfcc('By=test;URI="\\\\\\"";DNS=example.com')[0]![1]!.value, '\\"');
});

t.test("Envoy's xfcc_value vector: an unmatched quote is an error", async (t) => {
  t.throws(() => parseXfcc('By=test;URI="abc;DNS=example.com'), {
    name: "MtlsdError",
    code: "XFCC_MALFORMED",
    message: "X-Forwarded-Client-Cert is malformed: the quote at offset 12 is never closed",
  });
});

t.test("Envoy's documented examples parse into their pairs", async (t) => {
  const hash1 = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688";
  const hash2 = "9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e";
  const subject = "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";
  t.same(
    pairsOf(
      `By=http://frontend.lyft.com;Hash=${hash1};Subject="${subject}";URI=http://testclient.lyft.com;DNS=lyft.com;DNS=www.lyft.com`,
    ),
    [
      [
        ["By", "http://frontend.lyft.com"],
        ["Hash", hash1],
        ["Subject", subject],
        ["URI", "http://testclient.lyft.com"],
        ["DNS", "lyft.com"],
        ["DNS", "www.lyft.com"],
      ],
    ],
  );
  t.same(
    pairsOf(
      `By=http://frontend.lyft.com;Hash=${hash1};URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash=${hash2};URI=http://frontend.lyft.com`,
    ),
    [
      [
        ["By", "http://frontend.lyft.com"],
        ["Hash", hash1],
        ["URI", "http://testclient.lyft.com"],
      ],
      [
        ["By", "http://backend.lyft.com"],
        ["Hash", hash2],
        ["URI", "http://frontend.lyft.com"],
      ],
    ],
  );
});

t.test("Envoy's documented example is what formatXfccElement writes for the same certificate", async (t) => {
  t.equal(
    formatXfccElement({
      by: ["http://frontend.lyft.com"],
      hash: "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
      subject: "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client",
      uris: ["http://testclient.lyft.com"],
      dns: ["lyft.com", "www.lyft.com"],
    }),
    "By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;" +
      'Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com;' +
      "DNS=lyft.com;DNS=www.lyft.com",
  );
});

t.test("our element reads By, Hash, Subject, URI, DNS as DESIGN.md specifies", async (t) => {
  t.equal(
    formatXfccElement({
      by: ["spiffe://example.org/ns/orders/sa/orders"],
      hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
      subject: "CN=frontend,O=acme",
      uris: ["spiffe://example.org/ns/frontend/sa/frontend"],
      dns: ["frontend.example.org"],
    }),
    "By=spiffe://example.org/ns/orders/sa/orders;" +
      "Hash=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08;" +
      'Subject="CN=frontend,O=acme";URI=spiffe://example.org/ns/frontend/sa/frontend;DNS=frontend.example.org',
  );
});

t.test("the default detail order puts Cert and Chain before Subject, as Envoy's config does", async (t) => {
  t.equal(
    formatXfccElement({
      by: ["b"],
      hash: "h",
      subject: "CN=x",
      uris: ["u"],
      dns: ["d"],
      cert: "c",
      chain: "ch",
    }),
    'By=b;Hash=h;Cert="c";Chain="ch";Subject="CN=x";URI=u;DNS=d',
  );
});

t.test("an empty subject is still written, an absent one is not", async (t) => {
  t.equal(
    formatXfccElement({ by: [], hash: "h", subject: "", uris: ["u"], dns: [] }),
    'Hash=h;Subject="";URI=u',
  );
  t.equal(formatXfccElement({ by: [], hash: "h", uris: ["u"], dns: [] }), "Hash=h;URI=u");
});

t.test("an empty hash, cert or chain is left out", async (t) => {
  t.equal(
    formatXfccElement({ by: ["b"], hash: "", uris: ["u"], dns: [], cert: "", chain: "" }),
    "By=b;URI=u",
  );
});

t.test("a subject with quotes and backslashes is escaped inside its quotes", async (t) => {
  const subject = 'CN=say \\"hi\\",O=a\\,b';
  const element = formatXfccElement({ by: [], hash: "h", subject, uris: [], dns: [] });
  t.equal(element, 'Hash=h;Subject="CN=say \\\\\\"hi\\\\\\",O=a\\\\,b";URI=');
  t.equal(parseXfcc(element)[0]![1]!.value, subject);
});

t.test("a value with a delimiter, quote, backslash or edge space is quoted", async (t) => {
  for (const [value, written] of [
    ["a,b", '"a,b"'],
    ["a;b", '"a;b"'],
    ["a=b", '"a=b"'],
    ['a"b', '"a\\"b"'],
    ["a\\b", '"a\\\\b"'],
    [" a", '" a"'],
    ["a ", '"a "'],
    ["a b", "a b"],
  ] as const) {
    t.equal(formatXfccElement({ by: [], hash: "", uris: [value], dns: [] }), `URI=${written}`, value);
  }
});

t.test("a value a header cannot carry is refused with XFCC_INVALID_VALUE", async (t) => {
  for (const dns of ["a\r\nX-Evil: 1", "a\u0000b", "bücher.example", "a\u007fb"]) {
    t.throws(() => formatXfccElement({ by: [], hash: "h", uris: [], dns: [dns] }), {
      name: "MtlsdError",
      code: "XFCC_INVALID_VALUE",
    });
  }
  t.throws(() => formatXfccElement({ by: [], hash: "h", subject: "CN=\n", uris: [], dns: [] }), {
    code: "XFCC_INVALID_VALUE",
  });
});

t.test("keys are kept as written", async (t) => {
  t.same(pairsOf("by=a;HASH=b;uRi=c"), [
    [
      ["by", "a"],
      ["HASH", "b"],
      ["uRi", "c"],
    ],
  ]);
});

t.test("whitespace around keys, values and separators is ignored, and inner spaces are kept", async (t) => {
  t.same(pairsOf(' By = a b ;\tHash="x y" , URI=u '), [
    [
      ["By", "a b"],
      ["Hash", "x y"],
    ],
    [["URI", "u"]],
  ]);
});

t.test("empty elements and pairs are skipped", async (t) => {
  t.same(pairsOf(",By=a;;Hash=b;,, ,URI=c,"), [
    [
      ["By", "a"],
      ["Hash", "b"],
    ],
    [["URI", "c"]],
  ]);
  t.same(parseXfcc(""), []);
  t.same(parseXfcc(" , ; "), []);
});

t.test("a bare key= has an empty value", async (t) => {
  t.same(pairsOf("By=a;URI=;DNS="), [
    [
      ["By", "a"],
      ["URI", ""],
      ["DNS", ""],
    ],
  ]);
});

t.test("a backslash that escapes nothing is kept", async (t) => {
  t.same(pairsOf('Subject="CN=a\\,b";By=c\\d'), [
    [
      ["Subject", "CN=a\\,b"],
      ["By", "c\\d"],
    ],
  ]);
});

t.test(
  "escaped quotes and backslashes in an unquoted value unescape, as Envoy's parser reads them",
  async (t) => {
    t.same(pairsOf('By=a\\"b;URI=c\\\\d'), [
      [
        ["By", 'a"b'],
        ["URI", "c\\d"],
      ],
    ]);
  },
);

t.test("syntax errors are reported with XFCC_MALFORMED", async (t) => {
  const cases: [string, string][] = [
    ["By", 'key "By" at offset 0 has no "="'],
    ["By=a;Hash", 'key "Hash" at offset 5 has no "="'],
    ["=a", 'expected a key at offset 0, found "="'],
    ['By=a;"x"=b', 'expected a key at offset 5, found "\\""'],
    ["By=a;H ash=b", 'key "H" at offset 5 has no "="'],
    ['By="a"b', 'unexpected "b" at offset 6 after a quoted value'],
    ['By=a"b"', "a quote at offset 4 is inside an unquoted value"],
    ['By="a\\"', "the quote at offset 3 is never closed"],
    ['By="a\\', "the quote at offset 3 is never closed"],
  ];
  for (const [header, reason] of cases) {
    t.throws(
      () => parseXfcc(header),
      {
        name: "MtlsdError",
        code: "XFCC_MALFORMED",
        message: `X-Forwarded-Client-Cert is malformed: ${reason}`,
      },
      header,
    );
  }
});

t.test("isWellFormedXfcc agrees with parseXfcc", async (t) => {
  for (const header of ["", "By=a", 'By="a,b";URI=c,Hash=d', " , ", 'URI="a\\"b"']) {
    t.ok(isWellFormedXfcc(header), header);
  }
  for (const header of ['By="a', "By", 'By=a"', 'By="a"b', "=x"]) {
    t.notOk(isWellFormedXfcc(header), header);
  }
});

t.test("sanitize_set sets ours even when the peer sent nothing", async (t) => {
  t.equal(applyXfccMode("sanitize_set", undefined, "Hash=h;URI=u"), "Hash=h;URI=u");
});

t.test("sanitize removes the header even when the peer sent nothing", async (t) => {
  t.equal(applyXfccMode("sanitize", undefined, "Hash=h;URI=u"), undefined);
});

t.test("forward_only sends nothing when the peer sent nothing", async (t) => {
  t.equal(applyXfccMode("forward_only", undefined, "Hash=h;URI=u"), undefined);
});

t.test("several incoming headers joined with a comma are forwarded as one list", async (t) => {
  const incoming = ["By=a;URI=b", "By=c;URI=d"].join(",");
  t.equal(applyXfccMode("append_forward", incoming, "By=e;URI=f"), "By=a;URI=b,By=c;URI=d,By=e;URI=f");
  t.equal(applyXfccMode("forward_only", incoming, "By=e;URI=f"), incoming);
});

t.test("a malformed incoming header is dropped, not forwarded or appended to", async (t) => {
  const broken = 'By=spiffe://evil;URI="';
  t.equal(applyXfccMode("append_forward", broken, "By=e;Hash=h;URI=f"), "By=e;Hash=h;URI=f");
  t.equal(applyXfccMode("forward_only", broken, "By=e;Hash=h;URI=f"), undefined);
});

t.test("an incoming header without elements counts as absent", async (t) => {
  t.equal(applyXfccMode("append_forward", " , ", "By=e;URI=f"), "By=e;URI=f");
  t.equal(applyXfccMode("append_forward", "", "By=e;URI=f"), "By=e;URI=f");
  t.equal(applyXfccMode("forward_only", "", "By=e;URI=f"), undefined);
});

t.test("an appended element parses as its own hop, whatever well-formed header precedes it", async (t) => {
  const ours = formatXfccElement({ by: ["spiffe://td/us"], hash: "h", uris: ["spiffe://td/peer"], dns: [] });
  for (const incoming of ['URI="a,b\\\\"', "URI=a\\", 'Subject="x;By=spiffe://td/us"', "By=a;"]) {
    const forwarded = applyXfccMode("append_forward", incoming, ours)!;
    t.same(parseXfcc(forwarded).at(-1), parseXfcc(ours)[0], incoming);
  }
});

// Deterministic PRNG (mulberry32) so a failing case can be replayed from its seed.
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let r = Math.imul(a ^ (a >>> 15), 1 | a);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
}

const ALPHABET = 'abcXYZ019:/._-%,;="\\ \t';

function randomValue(next: () => number, minLength: number): string {
  const length = minLength + Math.floor(next() * 12);
  let value = "";
  for (let i = 0; i < length; i++) value += ALPHABET[Math.floor(next() * ALPHABET.length)];
  return value;
}

function randomList(next: () => number): string[] {
  return Array.from({ length: Math.floor(next() * 3) }, () => randomValue(next, 0));
}

t.test('random values with , ; = " \\ and spaces survive format then parse', async (t) => {
  for (let seed = 1; seed <= 500; seed++) {
    const next = random(seed);
    const fields: XfccFields = {
      by: randomList(next),
      hash: randomValue(next, 1),
      subject: randomValue(next, 0),
      uris: [randomValue(next, 0), ...randomList(next)],
      dns: randomList(next),
      cert: randomValue(next, 1),
      chain: randomValue(next, 1),
    };
    const element = formatXfccElement(fields);
    const parsed = parseXfcc(element);
    const values = (key: string) => parsed[0]!.filter((p) => p.key === key).map((p) => p.value);
    const ok =
      parsed.length === 1 &&
      JSON.stringify([values("By"), values("Hash"), values("Cert"), values("Chain")]) ===
        JSON.stringify([fields.by, [fields.hash], [fields.cert], [fields.chain]]) &&
      JSON.stringify([values("Subject"), values("URI"), values("DNS")]) ===
        JSON.stringify([[fields.subject], fields.uris, fields.dns]);
    if (!ok) {
      t.fail(`seed ${seed}: ${JSON.stringify(fields)} became ${element}`);
      return;
    }
    // The same element appended after another must come back unchanged too.
    const appended = applyXfccMode("append_forward", element, element)!;
    if (JSON.stringify(parseXfcc(appended)) !== JSON.stringify([parsed[0], parsed[0]])) {
      t.fail(`seed ${seed}: appending changed ${element}`);
      return;
    }
  }
  t.pass("500 random elements round-tripped");
});
