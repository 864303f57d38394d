//! Drawing: a square RGB canvas with filled rectangles and ellipses, per-pixel noise, and one
//! function per scene class that paints its ground cover and objects and returns their boxes.
//! Sizes are fractions of the canvas side, so a scene looks the same at any resolution.

use rand::Rng as _;
use rand_chacha::ChaCha8Rng;

use crate::Object;

type Rgb = [f32; 3];

/// A square canvas, `size × size`, RGB in 0–255.
pub(crate) struct Canvas {
    size: u32,
    pixels: Vec<Rgb>,
}

impl Canvas {
    pub(crate) fn new(size: u32) -> Self {
        Self { size, pixels: vec![[0.0; 3]; (size * size) as usize] }
    }

    fn side(&self) -> f32 {
        self.size as f32
    }

    /// `fraction` of the side, in whole pixels (at least 1).
    fn px(&self, fraction: f32) -> u32 {
        ((fraction * self.side()).round() as u32).max(1)
    }

    fn fill(&mut self, colour: Rgb) {
        self.pixels.fill(colour);
    }

    /// Fills `[x1, x2) × [y1, y2)`, clipped to the canvas.
    fn rect(&mut self, [x1, y1, x2, y2]: [u32; 4], colour: Rgb) {
        for y in y1.min(self.size)..y2.min(self.size) {
            for x in x1.min(self.size)..x2.min(self.size) {
                self.pixels[(y * self.size + x) as usize] = colour;
            }
        }
    }

    /// Fills the ellipse centred at `(cx, cy)` with radii `(rx, ry)`, clipped.
    fn ellipse(&mut self, (cx, cy): (f32, f32), (rx, ry): (f32, f32), colour: Rgb) {
        let (x1, x2) = ((cx - rx).floor().max(0.0) as u32, ((cx + rx).ceil() as u32 + 1).min(self.size));
        let (y1, y2) = ((cy - ry).floor().max(0.0) as u32, ((cy + ry).ceil() as u32 + 1).min(self.size));
        for y in y1..y2 {
            for x in x1..x2 {
                let (dx, dy) = ((x as f32 + 0.5 - cx) / rx, (y as f32 + 0.5 - cy) / ry);
                if dx * dx + dy * dy <= 1.0 {
                    self.pixels[(y * self.size + x) as usize] = colour;
                }
            }
        }
    }

    /// Adds uniform noise of ± `amplitude` to every channel.
    pub(crate) fn noise(&mut self, rng: &mut ChaCha8Rng, amplitude: i32) {
        let amplitude = amplitude as f32;
        for pixel in &mut self.pixels {
            for c in pixel.iter_mut() {
                *c += rng.random_range(-amplitude..=amplitude);
            }
        }
    }

    pub(crate) fn into_rgb(self) -> Vec<u8> {
        self.pixels.iter().flat_map(|p| p.map(|c| c.round().clamp(0.0, 255.0) as u8)).collect()
    }
}

/// `base` shifted by up to ± `spread` per channel.
fn vary(rng: &mut ChaCha8Rng, base: Rgb, spread: f32) -> Rgb {
    base.map(|c| c + rng.random_range(-spread..=spread))
}

// In the classes with objects the first object drawn is the prominent one: at least twice the
// area of any other, so that the referring expression `the largest …` names one object a
// viewer (and a model) can tell at 64 pixels, where similar sizes differ by a pixel or two.

/// A box of `w × h` pixels placed uniformly inside `area` without overlapping `taken` (with a
/// margin of `gap` pixels), or `None` after a bounded number of tries.
fn place(rng: &mut ChaCha8Rng, area: [u32; 4], (w, h): (u32, u32), taken: &[[u32; 4]], gap: u32) -> Option<[u32; 4]> {
    if area[2] < area[0] + w || area[3] < area[1] + h {
        return None;
    }
    for _ in 0..64 {
        let x = rng.random_range(area[0]..=area[2] - w);
        let y = rng.random_range(area[1]..=area[3] - h);
        let candidate = [x, y, x + w, y + h];
        let clear = taken
            .iter()
            .all(|t| candidate[2] + gap <= t[0] || t[2] + gap <= candidate[0] || candidate[3] + gap <= t[1] || t[3] + gap <= candidate[1]);
        if clear {
            return Some(candidate);
        }
    }
    None
}

const CROPS: [Rgb; 5] = [[96.0, 140.0, 60.0], [140.0, 160.0, 70.0], [170.0, 150.0, 90.0], [120.0, 95.0, 60.0], [80.0, 120.0, 50.0]];

pub(crate) fn farmland(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    let (columns, rows) = (rng.random_range(2..=4u32), rng.random_range(2..=4u32));
    let (cw, rh) = (canvas.size.div_ceil(columns), canvas.size.div_ceil(rows));
    for row in 0..rows {
        for column in 0..columns {
            let base = CROPS[rng.random_range(0..CROPS.len())];
            let crop = vary(rng, base, 12.0);
            let field = [column * cw, row * rh, (column + 1) * cw, (row + 1) * rh];
            canvas.rect(field, crop);
            // Furrows: darker lines every few pixels, across or along the field.
            let darker = crop.map(|c| c * 0.82);
            let step = canvas.px(0.04).max(2);
            let along = rng.random_bool(0.5);
            let mut at = if along { field[0] } else { field[1] };
            while at < if along { field[2] } else { field[3] } {
                let line = if along { [at, field[1], at + 1, field[3]] } else { [field[0], at, field[2], at + 1] };
                canvas.rect(line, darker);
                at += step;
            }
            // Field boundaries: a thin track.
            canvas.rect([field[0], field[1], field[2], field[1] + 1], [150.0, 140.0, 110.0]);
            canvas.rect([field[0], field[1], field[0] + 1, field[3]], [150.0, 140.0, 110.0]);
        }
    }
}

pub(crate) fn forest(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    canvas.fill([28.0, 62.0, 30.0]);
    let crowns = (canvas.side() * canvas.side() / 30.0) as usize;
    for _ in 0..crowns {
        let r = rng.random_range(0.02..0.05) * canvas.side();
        let (x, y) = (rng.random_range(0.0..canvas.side()), rng.random_range(0.0..canvas.side()));
        canvas.ellipse((x + r * 0.3, y + r * 0.3), (r, r), [18.0, 40.0, 20.0]); // shadow
        let green = vary(rng, [45.0, 105.0, 40.0], 18.0);
        canvas.ellipse((x, y), (r, r), green);
    }
}

pub(crate) fn lake(canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
    canvas.fill(vary(rng, [110.0, 140.0, 80.0], 10.0));
    for _ in 0..6 {
        let r = rng.random_range(0.08..0.2) * canvas.side();
        let (x, y) = (rng.random_range(0.0..canvas.side()), rng.random_range(0.0..canvas.side()));
        canvas.ellipse((x, y), (r, r * 0.7), vary(rng, [95.0, 130.0, 70.0], 10.0));
    }
    let s = canvas.side();
    let (cx, cy) = (rng.random_range(0.35..0.65) * s, rng.random_range(0.35..0.65) * s);
    let (rx, ry) = (rng.random_range(0.25..0.4) * s, rng.random_range(0.22..0.38) * s);
    canvas.ellipse((cx, cy), (rx * 1.06, ry * 1.06), [185.0, 175.0, 130.0]); // shore
    canvas.ellipse((cx, cy), (rx, ry), vary(rng, [35.0, 75.0, 140.0], 10.0));
}

pub(crate) fn residential(canvas: &mut Canvas, rng: &mut ChaCha8Rng) -> Vec<Object> {
    canvas.fill(vary(rng, [165.0, 160.0, 140.0], 8.0));
    let mut taken = Vec::new();
    let road = canvas.px(0.05);
    for _ in 0..rng.random_range(1..=2) {
        let y = rng.random_range(0..canvas.size - road);
        let r = [0, y, canvas.size, y + road];
        canvas.rect(r, [105.0, 105.0, 108.0]);
        taken.push(r);
    }
    for _ in 0..rng.random_range(1..=2) {
        let x = rng.random_range(0..canvas.size - road);
        let r = [x, 0, x + road, canvas.size];
        canvas.rect(r, [105.0, 105.0, 108.0]);
        taken.push(r);
    }
    let roofs: [Rgb; 3] = [[160.0, 65.0, 50.0], [125.0, 125.0, 132.0], [140.0, 100.0, 70.0]];
    let wanted = rng.random_range(2..=6);
    let mut objects = Vec::new();
    let area = [0, 0, canvas.size, canvas.size];
    for i in 0..wanted {
        // The first is the prominent one (above `place`): `the largest building` is then
        // plain to see, not a pixel's difference.
        let range = if i == 0 { 0.2..0.26 } else { 0.08..0.13 };
        let (w, h) = (canvas.px(rng.random_range(range.clone())), canvas.px(rng.random_range(range)));
        let Some(b) = place(rng, area, (w, h), &taken, canvas.px(0.02)) else { continue };
        let base = roofs[rng.random_range(0..roofs.len())];
        let roof = vary(rng, base, 10.0);
        canvas.rect([b[0] + 1, b[1] + 1, b[2] + 1, b[3] + 1], [70.0, 70.0, 70.0]); // shadow
        canvas.rect(b, roof);
        // Roof ridge: a lighter line along the longer side.
        let ridge = roof.map(|c| c * 1.2);
        if w >= h {
            canvas.rect([b[0], (b[1] + b[3]) / 2, b[2], (b[1] + b[3]) / 2 + 1], ridge);
        } else {
            canvas.rect([(b[0] + b[2]) / 2, b[1], (b[0] + b[2]) / 2 + 1, b[3]], ridge);
        }
        taken.push(b);
        objects.push(Object { label: "building", bbox: b });
    }
    objects
}

pub(crate) fn harbor(canvas: &mut Canvas, rng: &mut ChaCha8Rng) -> Vec<Object> {
    canvas.fill(vary(rng, [30.0, 70.0, 125.0], 8.0));
    // The quay along one edge: a third of the scene.
    let quay = canvas.px(rng.random_range(0.25..0.35));
    let vertical = rng.random_bool(0.5);
    let (land, water) = if vertical {
        ([0, 0, quay, canvas.size], [quay + canvas.px(0.03), 0, canvas.size, canvas.size])
    } else {
        ([0, 0, canvas.size, quay], [0, quay + canvas.px(0.03), canvas.size, canvas.size])
    };
    canvas.rect(land, vary(rng, [150.0, 148.0, 140.0], 8.0));
    let mut taken = Vec::new();
    let mut objects = Vec::new();
    for i in 0..rng.random_range(1..=4) {
        let (length, beam) = if i == 0 {
            (canvas.px(rng.random_range(0.3..0.36)), canvas.px(rng.random_range(0.08..0.1)))
        } else {
            (canvas.px(rng.random_range(0.12..0.18)), canvas.px(rng.random_range(0.04..0.05)))
        };
        // Ships lie along the quay.
        let (w, h) = if vertical { (beam, length) } else { (length, beam) };
        let Some(b) = place(rng, water, (w, h), &taken, canvas.px(0.03)) else { continue };
        canvas.rect([b[0] + 1, b[1] + 1, b[2] + 1, b[3] + 1], [15.0, 35.0, 70.0]); // shadow
        canvas.rect(b, vary(rng, [222.0, 222.0, 215.0], 8.0));
        // Deck house: a darker block in the middle.
        let (cx, cy) = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2);
        let (hw, hh) = (((b[2] - b[0]) / 4).max(1), ((b[3] - b[1]) / 4).max(1));
        canvas.rect([cx - hw / 2, cy - hh / 2, cx + hw / 2 + 1, cy + hh / 2 + 1], [120.0, 120.0, 125.0]);
        taken.push(b);
        objects.push(Object { label: "ship", bbox: b });
    }
    objects
}

pub(crate) fn industrial(canvas: &mut Canvas, rng: &mut ChaCha8Rng) -> Vec<Object> {
    canvas.fill(vary(rng, [152.0, 150.0, 145.0], 6.0));
    // Pipes and slabs: darker straight lines.
    for _ in 0..3 {
        let y = rng.random_range(0..canvas.size);
        canvas.rect([0, y, canvas.size, y + 1], [115.0, 115.0, 112.0]);
    }
    let mut taken = Vec::new();
    let mut objects = Vec::new();
    let area = [0, 0, canvas.size, canvas.size];
    for i in 0..rng.random_range(2..=6) {
        let d = canvas.px(if i == 0 { rng.random_range(0.22..0.28) } else { rng.random_range(0.1..0.14) });
        let Some(b) = place(rng, area, (d, d), &taken, canvas.px(0.03)) else { continue };
        let (c, r) = (((b[0] + b[2]) as f32 / 2.0, (b[1] + b[3]) as f32 / 2.0), d as f32 / 2.0);
        canvas.ellipse((c.0 + 1.5, c.1 + 1.5), (r, r), [80.0, 80.0, 80.0]); // shadow
        canvas.ellipse(c, (r, r), [120.0, 120.0, 118.0]); // rim
        canvas.ellipse(c, (r * 0.85, r * 0.85), vary(rng, [228.0, 228.0, 222.0], 6.0));
        taken.push(b);
        objects.push(Object { label: "storage tank", bbox: b });
    }
    objects
}
