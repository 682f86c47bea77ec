// Key pairs for the dev PKI: generation, PKCS#8 export, and import of keys that were written to disk earlier.

import { createPrivateKey, createPublicKey, type KeyObject, webcrypto } from "node:crypto";
import { MtlsdError } from "../errors.ts";
import { pemEncode } from "./pem.ts";

/** A WebCrypto key pair; named here because the project compiles without the DOM lib, which is where TypeScript keeps it. */
export type CryptoKeyPair = webcrypto.CryptoKeyPair;

/** The key types the PKI can generate; P-256 is the default because tests create dozens of keys and RSA is slow. */
export type KeyAlgorithm = "ec-p256" | "rsa-2048";

const SIGNING_USAGES: webcrypto.KeyUsage[] = ["sign", "verify"];

function generationParams(
  algorithm: KeyAlgorithm,
): webcrypto.EcKeyGenParams | webcrypto.RsaHashedKeyGenParams {
  switch (algorithm) {
    case "ec-p256":
      return { name: "ECDSA", namedCurve: "P-256" };
    case "rsa-2048":
      return {
        name: "RSASSA-PKCS1-v1_5",
        modulusLength: 2048,
        publicExponent: new Uint8Array([1, 0, 1]),
        hash: "SHA-256",
      };
    default:
      throw new MtlsdError(
        "PKI_UNSUPPORTED_KEY",
        `unsupported key algorithm ${JSON.stringify(algorithm)}; use "ec-p256" or "rsa-2048"`,
      );
  }
}

// Keys stay extractable because every issued credential has to be written out as a PKCS#8 PEM.
export async function generateKeyPair(algorithm: KeyAlgorithm = "ec-p256"): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(
    generationParams(algorithm),
    true,
    SIGNING_USAGES,
  )) as CryptoKeyPair;
}

/** True when the key pair is RSA, because RSA leaves conventionally also get keyEncipherment. */
export function isRsaKey(keys: CryptoKeyPair): boolean {
  return keys.privateKey.algorithm.name === "RSASSA-PKCS1-v1_5";
}

/** The private key as a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the form Node, OpenSSL and Envoy all read. */
export async function pemEncodeKey(keys: CryptoKeyPair): Promise<string> {
  if (!keys.privateKey.extractable) {
    throw new MtlsdError(
      "PKI_KEY_NOT_EXTRACTABLE",
      "the private key was created non-extractable, so it cannot be written as PEM",
    );
  }
  return pemEncode("PRIVATE KEY", await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
}

function importParams(key: KeyObject): webcrypto.EcKeyImportParams | webcrypto.RsaHashedImportParams {
  if (key.asymmetricKeyType === "rsa") return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
  if (key.asymmetricKeyType === "ec") {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    const namedCurve = { prime256v1: "P-256", secp384r1: "P-384", secp521r1: "P-521" }[curve ?? ""];
    if (namedCurve) return { name: "ECDSA", namedCurve };
    throw new MtlsdError(
      "PKI_UNSUPPORTED_KEY",
      `EC curve ${curve ?? "(unknown)"} is not supported; use P-256, P-384 or P-521`,
    );
  }
  throw new MtlsdError(
    "PKI_UNSUPPORTED_KEY",
    `${key.asymmetricKeyType ?? "unknown"} keys are not supported; use an EC (P-256) or RSA key`,
  );
}

/**
 * Parses a private key PEM in any form Node reads (PKCS#8, SEC1, PKCS#1) into a WebCrypto pair.
 * Returns the Node KeyObject too, so the caller can check it against a certificate without parsing twice.
 */
export function importPrivateKeyPem(keyPem: string): { keys: CryptoKeyPair; keyObject: KeyObject } {
  let keyObject: KeyObject;
  try {
    keyObject = createPrivateKey(keyPem);
  } catch (cause) {
    throw new MtlsdError(
      "PKI_BAD_PEM",
      "the private key PEM could not be parsed; expected a PKCS#8, SEC1 or PKCS#1 key",
      {
        cause,
      },
    );
  }
  const params = importParams(keyObject);
  const keys = {
    privateKey: keyObject.toCryptoKey(params, true, ["sign"]),
    publicKey: createPublicKey(keyObject).toCryptoKey(params, true, ["verify"]),
  };
  return { keys, keyObject };
}
