//! Boxes in model output: `<box>[x1, y1, x2, y2]</box>`, integers on a 0–1000 grid relative to
//! the tile, one box per object. Parsing is total: every malformed fragment is reported with
//! its text, and the well-formed boxes around it are kept.

/// The largest grid coordinate.
pub const GRID_MAX: u16 = 1000;

/// A box on the 0–1000 grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridBox {
    /// Left edge.
    pub x1: u16,
    /// Top edge.
    pub y1: u16,
    /// Right edge.
    pub x2: u16,
    /// Bottom edge.
    pub y2: u16,
}

impl GridBox {
    /// The box in pixels of a `width × height` tile, as `[x1, y1, x2, y2]`.
    pub fn to_pixels(&self, width: u32, height: u32) -> [f64; 4] {
        let sx = f64::from(width) / f64::from(GRID_MAX);
        let sy = f64::from(height) / f64::from(GRID_MAX);
        [f64::from(self.x1) * sx, f64::from(self.y1) * sy, f64::from(self.x2) * sx, f64::from(self.y2) * sy]
    }
}

/// What a model answer held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedBoxes {
    /// Well-formed boxes, in answer order.
    pub boxes: Vec<GridBox>,
    /// Byte range of each well-formed box's `<box>…</box>` in the answer, in the order of
    /// `boxes` (a per-box confidence is read from the tokens that spell it).
    pub spans: Vec<std::ops::Range<usize>>,
    /// Fragments that were not valid boxes, each with why.
    pub errors: Vec<String>,
}

const OPEN: &str = "<box>";
const CLOSE: &str = "</box>";

/// Parses every `<box>` tag in `answer`.
pub fn parse_boxes(answer: &str) -> ParsedBoxes {
    let mut parsed = ParsedBoxes::default();
    // `offset`: where `rest` starts in `answer`.
    let (mut rest, mut offset) = (answer, 0);
    while let Some(start) = rest.find(OPEN) {
        let after_open = &rest[start + OPEN.len()..];
        let Some(end) = after_open.find(CLOSE) else {
            parsed.errors.push(format!("unclosed <box>: `{}`", truncate(after_open)));
            break;
        };
        let inner = &after_open[..end];
        let consumed = start + OPEN.len() + end + CLOSE.len();
        match parse_one(inner) {
            Ok(b) => {
                parsed.boxes.push(b);
                parsed.spans.push(offset + start..offset + consumed);
            }
            Err(reason) => parsed.errors.push(format!("`<box>{}</box>`: {reason}", truncate(inner))),
        }
        rest = &after_open[end + CLOSE.len()..];
        offset += consumed;
    }
    parsed
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

fn parse_one(inner: &str) -> Result<GridBox, String> {
    let body = inner.trim();
    let body = body.strip_prefix('[').and_then(|b| b.strip_suffix(']')).ok_or_else(|| "expected `[x1, y1, x2, y2]`".to_owned())?;
    let values: Vec<&str> = body.split(',').map(str::trim).collect();
    if values.len() != 4 {
        return Err(format!("expected 4 coordinates, found {}", values.len()));
    }
    let mut coords = [0u16; 4];
    for (slot, text) in coords.iter_mut().zip(&values) {
        let value: u32 = text.parse().map_err(|_| format!("`{text}` is not a whole number"))?;
        if value > u32::from(GRID_MAX) {
            return Err(format!("{value} is off the 0–{GRID_MAX} grid"));
        }
        *slot = value as u16;
    }
    let [x1, y1, x2, y2] = coords;
    if x1 > x2 || y1 > y2 {
        return Err("corners are not top-left then bottom-right".to_owned());
    }
    // A box is an area: an edge of zero length (`y1 = y2`) cannot be georeferenced or scored.
    if x1 == x2 || y1 == y2 {
        return Err("the box has no area (an edge of zero length)".to_owned());
    }
    Ok(GridBox { x1, y1, x2, y2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_boxes_are_read_in_order() {
        let parsed = parse_boxes("ships: <box>[10, 20, 300, 400]</box> and <box>[0,0,1000,1000]</box>.");
        assert_eq!(parsed.boxes, vec![GridBox { x1: 10, y1: 20, x2: 300, y2: 400 }, GridBox { x1: 0, y1: 0, x2: 1000, y2: 1000 }]);
        assert!(parsed.errors.is_empty());
        assert_eq!(parsed.boxes[0].to_pixels(384, 384), [3.84, 7.68, 115.2, 153.6]);
        let text = "ships: <box>[10, 20, 300, 400]</box> and <box>[0,0,1000,1000]</box>.";
        let spelled: Vec<&str> = parsed.spans.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(spelled, ["<box>[10, 20, 300, 400]</box>", "<box>[0,0,1000,1000]</box>"], "spans say where each box is written");
    }

    #[test]
    fn malformed_boxes_are_reported_and_the_rest_kept() {
        let parsed = parse_boxes(
            "<box>[1, 2]</box><box>[5, 5, 1200, 9]</box><box>[a, 1, 2, 3]</box><box>[9, 9, 1, 1]</box>\
             <box>[641, 1000, 781, 1000]</box><box>10, 20, 30, 40</box><box>[100, 100, 200, 200]</box><box>[3, 3, 4",
        );
        assert_eq!(parsed.boxes, vec![GridBox { x1: 100, y1: 100, x2: 200, y2: 200 }]);
        assert_eq!(parsed.spans, vec![147..178], "the span of the one good box, past the malformed ones");
        assert_eq!(parsed.errors.len(), 7, "{:?}", parsed.errors);
        assert!(parsed.errors[0].contains("expected 4 coordinates"));
        assert!(parsed.errors[1].contains("off the 0–1000 grid"));
        assert!(parsed.errors[2].contains("not a whole number"));
        assert!(parsed.errors[3].contains("top-left then bottom-right"));
        assert!(parsed.errors[4].contains("no area"));
        assert!(parsed.errors[5].contains("expected `[x1, y1, x2, y2]`"));
        assert!(parsed.errors[6].contains("unclosed"));
    }

    #[test]
    fn arbitrary_text_never_panics() {
        for text in [
            "",
            "<box>",
            "</box><box>",
            "<box>[]</box>",
            "<box>[-1,0,0,0]</box>",
            "<box>[99999999999999999999,0,0,0]</box>",
            "<box>[ü,ö,ä,ß]</box>",
        ] {
            let parsed = parse_boxes(text);
            assert!(parsed.boxes.is_empty(), "{text}");
        }
        assert!(parse_boxes("no boxes here").errors.is_empty());
    }
}
