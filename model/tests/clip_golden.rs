//! The CLIP encoders through ONNX Runtime against PyTorch: `fixtures/clip-tiny` is a random
//! transformers `CLIPModel` in the Hugging Face format, its ONNX export by
//! `scripts/export/clip_to_onnx.py` and PyTorch's embeddings of two windows of a real scene and
//! three texts (`scripts/fixtures/make_tiny_clip.py`). The image path runs this crate's
//! preprocessing on the raw pixels, so the comparison covers resize, crop and normalisation too.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::path::PathBuf;

use model::encoders::{ImageEncoder, TextEncoder};
use model::preprocess::RgbImage;
use safetensors::SafeTensors;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny")
}

fn golden() -> Vec<u8> {
    std::fs::read(fixture().join("golden.safetensors")).expect("golden fixture")
}

fn rows(bytes: &[u8], name: &str) -> Vec<Vec<f32>> {
    let tensors = SafeTensors::deserialize(bytes).unwrap();
    let view = tensors.tensor(name).unwrap();
    let width = view.shape()[1];
    let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    values.chunks(width).map(<[f32]>::to_vec).collect()
}

fn image(bytes: &[u8], name: &str) -> RgbImage {
    let tensors = SafeTensors::deserialize(bytes).unwrap();
    let view = tensors.tensor(name).unwrap();
    RgbImage::new(view.shape()[1], view.shape()[0], view.data().to_vec()).unwrap()
}

fn assert_close(actual: &[Vec<f32>], expected: &[Vec<f32>], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!(a.len(), e.len(), "{what}");
        let worst = a.iter().zip(e).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{what}: largest difference {worst}");
    }
}

#[test]
fn image_embeddings_of_raw_pixels_match_pytorch() {
    let bytes = golden();
    let mut encoder = ImageEncoder::load(&fixture(), 1).expect("image encoder");
    assert_eq!(encoder.dim(), 16);
    let images = [image(&bytes, "image_0"), image(&bytes, "image_1")];
    let embeddings = encoder.encode(&images).unwrap();
    assert_close(&embeddings, &rows(&bytes, "image_embeds"), "image embeddings");
    for e in &embeddings {
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}

#[test]
fn text_embeddings_of_the_clip_text_tower_match_pytorch() {
    let bytes = golden();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let texts: Vec<String> = serde_json::from_str(&metadata.metadata().as_ref().unwrap()["texts"]).unwrap();
    // Batched with padding, and one at a time: both equal the reference.
    let mut encoder = TextEncoder::load(&fixture(), 16, 1).expect("text encoder");
    let expected = rows(&bytes, "text_embeds");
    assert_close(&encoder.encode(&texts).unwrap(), &expected, "text embeddings, batched");
    for (text, e) in texts.iter().zip(&expected) {
        assert_close(&encoder.encode(std::slice::from_ref(text)).unwrap(), std::slice::from_ref(e), "text embeddings, alone");
    }
}

#[test]
fn an_image_model_with_the_wrong_input_shape_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["image_model.onnx", "tokenizer.json", "config.json"] {
        std::fs::copy(fixture().join(file), dir.path().join(file)).unwrap();
    }
    // The processor now makes 48 × 48 pixels; the model was exported for 32 × 32.
    let config = std::fs::read_to_string(fixture().join("preprocessor_config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["crop_size"] = serde_json::json!({"height": 48, "width": 48});
    config["size"] = serde_json::json!({"shortest_edge": 48});
    std::fs::write(dir.path().join("preprocessor_config.json"), config.to_string()).unwrap();
    let err = ImageEncoder::load(dir.path(), 1).unwrap_err().to_string();
    assert!(err.contains("pixel_values") && err.contains("48") && err.contains("32"), "{err}");

    // A text model handed over as the image model.
    std::fs::copy(fixture().join("model.onnx"), dir.path().join("image_model.onnx")).unwrap();
    let err = ImageEncoder::load(dir.path(), 1).unwrap_err().to_string();
    assert!(err.contains("pixel_values"), "{err}");

    // The image model handed over as the text model.
    std::fs::copy(fixture().join("image_model.onnx"), dir.path().join("model.onnx")).unwrap();
    let err = TextEncoder::load(dir.path(), 16, 1).unwrap_err().to_string();
    assert!(err.contains("input_ids"), "{err}");

    // No model at all.
    let empty = tempfile::tempdir().unwrap();
    let err = ImageEncoder::load(empty.path(), 1).unwrap_err().to_string();
    assert!(err.contains("clip_to_onnx"), "{err}");
}
