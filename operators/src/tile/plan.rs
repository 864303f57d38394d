//! Where tiles go. Windows step by `tile - overlap`; the last window in each direction is
//! pulled back to end exactly at the scene edge, so every pixel is covered, no window hangs off
//! the scene, and every tile of a large scene has the same scale. A scene smaller than a tile
//! in some direction gets one window spanning that direction.

use schemas::PixelWindow;

/// One planned window with its grid position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedWindow {
    /// Row index in the tile grid.
    pub grid_row: u32,
    /// Column index in the tile grid.
    pub grid_col: u32,
    /// The window in scene pixels.
    pub window: PixelWindow,
}

impl PlannedWindow {
    /// Stable tile id, e.g. `r0003_c0012`.
    pub fn tile_id(&self) -> String {
        format!("r{:04}_c{:04}", self.grid_row, self.grid_col)
    }
}

/// Window starts along one axis of `extent` pixels.
fn starts(extent: u64, tile: u64, overlap: u64) -> Vec<u64> {
    if extent <= tile {
        return vec![0];
    }
    let stride = tile - overlap;
    let last = extent - tile;
    let mut starts: Vec<u64> = (0..).map(|i| i * stride).take_while(|&s| s < last).collect();
    starts.push(last);
    starts
}

/// Plans the windows of a `width × height` scene, row-major.
pub fn plan_windows(width: u64, height: u64, tile_size: u32, overlap: u32) -> Vec<PlannedWindow> {
    let tile = u64::from(tile_size);
    let overlap = u64::from(overlap.min(tile_size.saturating_sub(1)));
    let cols = starts(width, tile, overlap);
    let rows = starts(height, tile, overlap);
    let mut windows = Vec::with_capacity(cols.len() * rows.len());
    for (grid_row, &row_off) in rows.iter().enumerate() {
        for (grid_col, &col_off) in cols.iter().enumerate() {
            windows.push(PlannedWindow {
                grid_row: u32::try_from(grid_row).unwrap_or(u32::MAX),
                grid_col: u32::try_from(grid_col).unwrap_or(u32::MAX),
                window: PixelWindow {
                    col_off,
                    row_off,
                    // Both are at most `tile_size`, so they fit.
                    width: u32::try_from(width.min(tile)).unwrap_or(tile_size),
                    height: u32::try_from(height.min(tile)).unwrap_or(tile_size),
                },
            });
        }
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts how many windows cover each pixel.
    fn coverage(width: u64, height: u64, tile: u32, overlap: u32) -> Vec<u32> {
        let mut hits = vec![0u32; (width * height) as usize];
        for w in plan_windows(width, height, tile, overlap) {
            let win = w.window;
            assert!(win.col_off + u64::from(win.width) <= width, "{win:?} hangs off the right edge");
            assert!(win.row_off + u64::from(win.height) <= height, "{win:?} hangs off the bottom edge");
            for r in win.row_off..win.row_off + u64::from(win.height) {
                for c in win.col_off..win.col_off + u64::from(win.width) {
                    hits[(r * width + c) as usize] += 1;
                }
            }
        }
        hits
    }

    #[test]
    fn odd_sizes_are_covered_without_gaps_or_overhang() {
        for (w, h, tile, overlap) in [(349, 352, 128, 16), (1001, 999, 256, 64), (513, 511, 512, 64), (97, 300, 64, 0), (64, 64, 64, 8)] {
            let hits = coverage(w, h, tile, overlap);
            assert!(hits.iter().all(|&n| n >= 1), "{w}x{h} tile {tile}: a pixel is uncovered");
        }
    }

    #[test]
    fn windows_step_by_stride_and_end_at_the_edge() {
        let windows = plan_windows(1000, 600, 512, 64);
        let cols: Vec<_> = windows.iter().filter(|w| w.grid_row == 0).map(|w| w.window.col_off).collect();
        assert_eq!(cols, vec![0, 448, 488]);
        let rows: Vec<_> = windows.iter().filter(|w| w.grid_col == 0).map(|w| w.window.row_off).collect();
        assert_eq!(rows, vec![0, 88]);
        assert!(windows.iter().all(|w| w.window.width == 512 && w.window.height == 512));
        assert_eq!(windows[4].tile_id(), "r0001_c0001");
    }

    #[test]
    fn exact_multiples_do_not_add_a_duplicate_edge_window() {
        // 448 + 512 = 960: the second window already ends at the edge.
        let windows = plan_windows(960, 512, 512, 64);
        let cols: Vec<_> = windows.iter().map(|w| w.window.col_off).collect();
        assert_eq!(cols, vec![0, 448]);
    }

    #[test]
    fn scenes_smaller_than_a_tile_get_one_partial_window() {
        let windows = plan_windows(300, 200, 512, 64);
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].window, PixelWindow { col_off: 0, row_off: 0, width: 300, height: 200 });
    }
}
