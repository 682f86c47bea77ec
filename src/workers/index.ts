// The workers module's public face: `workers: N` as a primary that supervises N sidecar workers.
export { Primary, type PrimaryOptions } from "./primary.ts";
export { PrimarySource, runWorker, type WorkerChannel, type WorkerOptions } from "./worker.ts";
