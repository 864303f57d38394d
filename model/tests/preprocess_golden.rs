//! Image preprocessing against the reference: `model/tests/fixtures/preprocess/golden.safetensors`
//! holds a real image (a window of the Landsat scene) and what transformers' PIL image
//! processors and Pillow's `Image.resize` made of it (`scripts/fixtures/make_preprocess_golden.py`).

use std::path::PathBuf;

use model::preprocess::{resize, Filter, ImageProcessor, RgbImage};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn load() -> Self {
        Self { bytes: std::fs::read(fixtures().join("golden.safetensors")).expect("golden fixture") }
    }

    fn tensor(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let tensors = SafeTensors::deserialize(&self.bytes).expect("safetensors");
        let view = tensors.tensor(name).unwrap_or_else(|_| panic!("{name} in the fixture"));
        (view.shape().to_vec(), view.data().to_vec())
    }

    fn image(&self, name: &str) -> RgbImage {
        let (shape, data) = self.tensor(name);
        assert_eq!(shape[2], 3, "{name} is HWC RGB");
        RgbImage::new(shape[1], shape[0], data).expect("image")
    }

    fn floats(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, data) = self.tensor(name);
        (shape, data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

#[test]
fn processors_match_the_reference_pixels_within_1e_5() {
    let golden = Golden::load();
    let source = golden.image("source");
    for case in ["clip_224", "siglip_112", "clip_pad"] {
        let processor = ImageProcessor::from_file(&fixtures().join(case).join("preprocessor_config.json")).expect(case);
        let (shape, expected) = golden.floats(case);
        let (height, width) = processor.output_size(source.width, source.height);
        assert_eq!(vec![3, height, width], shape, "{case}: output size");
        let actual = processor.apply(&source).expect(case);
        assert_eq!(actual.len(), expected.len(), "{case}");
        let worst = actual.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{case}: largest pixel difference {worst}");
    }
}

#[test]
fn resizing_reproduces_pillow_byte_for_byte() {
    let golden = Golden::load();
    let source = golden.image("source");
    let cases = [
        ("resize_bicubic_97x300", Filter::Bicubic),
        ("resize_bicubic_500x40", Filter::Bicubic),
        ("resize_bicubic_320x61", Filter::Bicubic),
        ("resize_bicubic_353x263", Filter::Bicubic),
        ("resize_bilinear_45x33", Filter::Bilinear),
        ("resize_lanczos_45x33", Filter::Lanczos),
        ("resize_box_45x33", Filter::Box),
        ("resize_hamming_45x33", Filter::Hamming),
    ];
    for (name, filter) in cases {
        let expected = golden.image(name);
        let actual = resize(&source, expected.width, expected.height, filter).expect(name);
        let differing = actual.pixels.iter().zip(&expected.pixels).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{name}: {differing} of {} bytes differ from Pillow", expected.pixels.len());
    }
}

#[test]
fn the_siglip_config_reads_as_the_models_own_processor() {
    let read = ImageProcessor::from_file(&fixtures().join("siglip_112/preprocessor_config.json")).unwrap();
    assert_eq!(read, ImageProcessor::siglip(112, [0.5; 3], [0.5; 3]));
    let clip = ImageProcessor::from_file(&fixtures().join("clip_224/preprocessor_config.json")).unwrap();
    assert_eq!(clip, ImageProcessor::clip(224));
}

#[test]
fn settings_it_cannot_reproduce_are_refused_by_name() {
    for (json, needle) in [
        (r#"{"resample": 0}"#, "resample 0"),
        (r#"{"image_std": [0.5, 0.0, 0.5]}"#, "image_std"),
        (r#"{"image_mean": [0.5, 0.5]}"#, "image_mean"),
        (r#"{"size": {"shortest_edge": 224, "longest_edge": 448}}"#, "longest_edge"),
        (r#"{"crop_size": {"height": 10}}"#, "crop_size"),
        ("{not json", "malformed"),
    ] {
        let err = ImageProcessor::from_json(json).expect_err(json).to_string();
        assert!(err.contains(needle), "{json}: {err}");
    }
    assert!(RgbImage::new(4, 4, vec![0; 47]).is_err());
    assert!(resize(&RgbImage::new(2, 2, vec![0; 12]).unwrap(), 0, 3, Filter::Bicubic).is_err());
}
