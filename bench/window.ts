// The two lines bench/load.ts prints at the edges of its measured window; the harness reads proxy CPU there.
export const WINDOW_OPENS = "measuring";
export const WINDOW_CLOSES = "measured";
