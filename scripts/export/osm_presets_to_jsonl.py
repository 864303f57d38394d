"""Turns the OpenStreetMap iD tagging schema (npm `@openstreetmap/id-tagging-schema`, ISC
licence) into a starter semantic database: one description per named feature preset, as the
JSON Lines `strata index build` reads.

    python scripts/export/osm_presets_to_jsonl.py PACKAGE.tgz OUT.jsonl

Each line: {"id": "osm:leisure/marina", "text": "Marina: boats, docks, harbor, harbour,
moorings, yachts", "level": "scene" | "object", "category": "leisure", "source": ...}.
Presets drawn as areas are scene-level (land use, harbours, airports), the rest object-level.
"""
import json
import sys
import tarfile

package, out = sys.argv[1], sys.argv[2]
with tarfile.open(package) as tar:
    presets = json.load(tar.extractfile("package/dist/presets.json"))
    strings = json.load(tar.extractfile("package/dist/translations/en.json"))["en"]["presets"]["presets"]
    version = json.load(tar.extractfile("package/package.json"))["version"]

count = 0
with open(out, "w") as f:
    for key in sorted(presets):
        preset, text = presets[key], strings.get(key, {})
        name = text.get("name")
        if not name or preset.get("searchable") is False:
            continue
        terms = [t.strip() for t in text.get("terms", "").split(",")] if isinstance(text.get("terms"), str) else text.get("terms", [])
        terms = [t for t in terms if t and t.lower() != name.lower()]
        description = f"{name}: {', '.join(terms)}" if terms else name
        geometry = preset.get("geometry", [])
        f.write(json.dumps({
            "id": f"osm:{key}",
            "text": description,
            "level": "scene" if "area" in geometry else "object",
            "category": key.split("/")[0],
            "source": f"@openstreetmap/id-tagging-schema@{version}",
        }) + "\n")
        count += 1
print(f"wrote {count} descriptions to {out}")
