// Outlier detection for one endpoint: failures in a row, ejection for a doubling time, and its return.

/** `outbound.upstreams.NAME.outlier`, in milliseconds. */
export interface OutlierSettings {
  consecutiveFailures: number;
  ejectFor: number;
  maxEjectFor: number;
}

/** Why and for how long an endpoint was taken out of rotation. */
export interface Ejection {
  /** `connect_failure` (refused, unreachable, handshake or identity) or `consecutive_failures`. */
  reason: "connect_failure" | "consecutive_failures";
  detail: string;
  forMs: number;
  until: number;
  /** Ejections in a row, this one included: each doubles the time, up to maxEjectFor. */
  inARow: number;
}

/**
 * What the balancer knows of an endpoint's health, as Envoy's outlier detection keeps it: a failed connection
 * ejects at once (nothing was served, and the next request would fail the same way); answers fail one by one
 * until `consecutiveFailures` in a row. An ejection lasts `ejectFor`, doubled for each further one in a row up to
 * `maxEjectFor`; when it ends, requests are the probe, and the first success clears the record.
 */
export class EndpointHealth {
  /** Requests in flight on this endpoint through the balancer: what least_request compares. */
  active = 0;
  #failures = 0;
  #inARow = 0;
  #ejectedUntil = 0;

  isEjected(now: number): boolean {
    return now < this.#ejectedUntil;
  }

  /** When the current ejection ends; undefined when the endpoint is in rotation. */
  ejectedUntil(now: number): number | undefined {
    return this.isEjected(now) ? this.#ejectedUntil : undefined;
  }

  /** An answer that was not a failure. True when it ends a run of ejections: the endpoint is back for good. */
  success(now: number): boolean {
    this.#failures = 0;
    if (this.#inARow === 0 || this.isEjected(now)) return false;
    this.#inARow = 0;
    return true;
  }

  /** A 5xx answer, a reset or a timeout; the ejection, when this one made `consecutiveFailures`. */
  failure(now: number, settings: OutlierSettings, detail: string): Ejection | undefined {
    if (this.isEjected(now)) return undefined;
    this.#failures++;
    if (this.#failures < settings.consecutiveFailures) return undefined;
    return this.#eject(now, settings, "consecutive_failures", detail);
  }

  /** A connection that could not be opened: ejected at once, unless already out. */
  connectFailure(now: number, settings: OutlierSettings, detail: string): Ejection | undefined {
    if (this.isEjected(now)) return undefined;
    return this.#eject(now, settings, "connect_failure", detail);
  }

  #eject(now: number, settings: OutlierSettings, reason: Ejection["reason"], detail: string): Ejection {
    this.#failures = 0;
    const forMs = Math.min(settings.ejectFor * 2 ** this.#inARow, settings.maxEjectFor);
    this.#inARow++;
    this.#ejectedUntil = now + forMs;
    return { reason, detail, forMs, until: this.#ejectedUntil, inARow: this.#inARow };
  }
}
