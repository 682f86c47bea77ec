// Watches the directories that hold the credential files, because a watch on a file goes deaf after the first swap.
import { type FSWatcher, realpathSync, statSync, watch } from "node:fs";
import path from "node:path";
import type { Logger } from "pino";

/**
 * A Kubernetes secret volume replaces its files by renaming the `..data` symlink, and tools like cert-manager or
 * an editor replace a file by renaming a new one over it; either way the inode a file watch was bound to is
 * gone and the watch never fires again. A directory watch survives both. Each directory holding a configured
 * path is watched, and so is the directory the path resolves to through symlinks (a link into another folder
 * rewritten in place). Events are only a hint that something may have changed: the reloader reads and hashes.
 */
export class DirectoryWatch {
  readonly #files: readonly string[];
  readonly #onChange: () => void;
  readonly #logger: Logger;
  /** Directory → its watcher, the entry names in it that matter, and the inode the watch is bound to. */
  readonly #watchers = new Map<string, { watcher: FSWatcher; names: Set<string>; inode: number }>();
  #closed = false;

  constructor(files: readonly string[], onChange: () => void, logger: Logger) {
    this.#files = files;
    this.#onChange = onChange;
    this.#logger = logger;
  }

  /** The directories being watched now (for tests and /status). */
  get directories(): string[] {
    return [...this.#watchers.keys()];
  }

  /**
   * Opens watchers for every directory that should be watched and closes those no longer needed. Called at
   * start, after each reload (symlinks may now point elsewhere) and by the polling backstop (a watcher that
   * failed, for example because its directory was removed, is re-opened once the directory is back).
   */
  arm(): void {
    if (this.#closed) return;
    const wanted = this.#wanted();
    for (const [directory, entry] of this.#watchers) {
      // A directory that was removed or replaced leaves a watch on the old inode that never fires again.
      if (!wanted.has(directory) || inodeOf(directory) !== entry.inode) {
        entry.watcher.close();
        this.#watchers.delete(directory);
      }
    }
    for (const [directory, names] of wanted) {
      const existing = this.#watchers.get(directory);
      if (existing) {
        existing.names = names;
        continue;
      }
      const inode = inodeOf(directory);
      if (inode === undefined) continue;
      try {
        const watcher = watch(directory, { persistent: false }, (_event, name) => {
          // Kubernetes' atomic writer works through `..data`, `..data_tmp` and `..<timestamp>` entries.
          if (name === null || names.has(name) || name.startsWith("..")) this.#onChange();
        });
        watcher.on("error", (error) => {
          this.#logger.warn(
            { directory, error: error.message },
            "stopped watching a credentials directory; the polling backstop still reloads",
          );
          watcher.close();
          if (this.#watchers.get(directory)?.watcher === watcher) this.#watchers.delete(directory);
        });
        this.#watchers.set(directory, { watcher, names, inode });
      } catch (error) {
        this.#logger.warn(
          { directory, error: (error as Error).message },
          "cannot watch a credentials directory; the polling backstop still reloads",
        );
      }
    }
  }

  close(): void {
    this.#closed = true;
    for (const { watcher } of this.#watchers.values()) watcher.close();
    this.#watchers.clear();
  }

  #wanted(): Map<string, Set<string>> {
    const wanted = new Map<string, Set<string>>();
    const add = (file: string) => {
      const directory = path.dirname(file);
      let names = wanted.get(directory);
      if (!names) {
        names = new Set();
        wanted.set(directory, names);
      }
      names.add(path.basename(file));
    };
    for (const file of this.#files) {
      add(file);
      let resolved: string | undefined;
      try {
        resolved = realpathSync(file);
      } catch {
        // Missing right now (mid-swap): the configured directory's watcher will see it come back.
      }
      // A Kubernetes link resolves into a `..<timestamp>` folder that the next swap deletes: the `..data`
      // rename in the configured directory is the event that matters there, so that folder is not watched.
      if (resolved && resolved !== file && !path.basename(path.dirname(resolved)).startsWith("..")) {
        add(resolved);
      }
    }
    return wanted;
  }
}

function inodeOf(directory: string): number | undefined {
  try {
    return statSync(directory).ino;
  } catch {
    return undefined;
  }
}
