#!/usr/bin/env bash
# The main job end to end on the embedded default (no broker, local object store): tile the
# bundled real scenes (a Landsat 7 scene, a Landsat RGB composite, and a STAC item of
# single-band assets) into georeferenced tiles and GeoParquet tables, then list the tiles with
# their footprints. Outputs go to ./strata-out (or $STRATA_DEMO_OUT).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
cargo build --locked -q -p pipeline --bin strata
STRATA=${CARGO_TARGET_DIR:-$ROOT/target}/debug/strata
OUT=${STRATA_DEMO_OUT:-$ROOT/strata-out}

"$STRATA" batch --tile-size 192 --overlap 32 --tables "$OUT/tables" --tiles "$OUT/tiles" \
  data/scenes data/stac/rmnp-bands-item.json
echo
"$STRATA" query --tables "$OUT/tables" \
  "SELECT scene_id, tile_id, col_off, row_off, width, height, round(valid_fraction, 3) AS valid, geometry
   FROM tiles ORDER BY scene_id, tile_id"
echo
echo "tile images: $OUT/tiles    more: $STRATA query --tables $OUT/tables --format geojson \"SELECT * FROM tiles\"" >&2
