//! The whole model's behaviour: names and sizes follow the spec, batching does not change
//! answers, LoRA merges exactly, artifacts round-trip and refuse tampering.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use common::*;
use model::artifact::{self, Artifact, Provenance};
use model::generate::{GenerationConfig, Sampling};
use model::vlm::VlmRequest;
use tch::{Device, Kind};

fn requests(model: &model::vlm::StrataModel) -> Vec<VlmRequest> {
    vec![
        request(colour_image(model, [200, 30, 30], 1), "What colour is the image?", &["A red forest.", "A river.", "A beach."]),
        request(colour_image(model, [30, 200, 30], 2), "Describe the image in detail.", &[]),
        request(
            colour_image(model, [30, 30, 200], 3),
            "Choose the best category describing the image from: airport, beach, forest, harbour",
            &["A blue harbour seen from above, with harbours nearby.", "The image shows a blue area. It is blue."],
        ),
    ]
}

fn greedy(max_new_tokens: i64) -> GenerationConfig {
    // No stop tokens besides the tokenizer's; random weights rarely emit them.
    GenerationConfig { max_new_tokens, sampling: Sampling::Greedy, stop_tokens: Vec::new(), seed: None, slots: None }
}

#[test]
fn variables_carry_hf_and_strata_names_with_the_spec_sizes() {
    let mut model = tiny_model(1);
    assert_eq!(model.llm_mut().expert_layers(), vec![3, 7]);
    let vars = model.var_store().variables();
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj.bias",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "vision_model.encoder.layers.2.mlp.fc2.weight",
        "vision_model.post_layernorm.weight",
        "strata.projector.linear_1.weight",
        "strata.prompter.aggregation_tokens",
        "strata.prompter.level_blocks.2.attention.k_proj.weight",
        "strata.llm.layers.3.router.weight",
        "strata.llm.layers.7.experts.2.down.weight",
        "strata.llm.layers.0.mlp.down_proj.lora_a",
    ] {
        assert!(vars.contains_key(name), "missing {name}");
    }
    // Experts only in layers 3 and 7; 3 levels; 2·d·r parameters each.
    let expert_params: usize = vars.iter().filter(|(n, _)| n.contains(".experts.")).map(|(_, t)| t.numel()).sum();
    assert_eq!(expert_params, 2 * 3 * (2 * 64 * 8));
    assert!(!vars.keys().any(|n| n.starts_with("strata.llm.layers.2.experts")));
    assert_eq!(vars["strata.prompter.aggregation_tokens"].size(), vec![4, 64]);
    // The level blocks project keys/values from d_v = 32 to d = 64.
    assert_eq!(vars["strata.prompter.level_blocks.0.attention.k_proj.weight"].size(), vec![64, 32]);
    // LoRA: rank 4 on all seven projections of all eight layers.
    let lora: Vec<_> = vars.keys().filter(|n| n.ends_with("lora_a")).collect();
    assert_eq!(lora.len(), 7 * 8);
    assert_eq!(model.config().semantic_tokens(), 12);
}

#[test]
fn batched_generation_equals_one_by_one() {
    let mut model = tiny_model(2);
    randomise_new_modules(&model);
    let config = greedy(6);
    let batched = model.generate(&requests(&model), &config).unwrap();
    assert_eq!(batched.len(), 3);
    // Random weights talk, though one answer may hit the stop token early (the weights come
    // from libtorch's global generator, which the tests of this binary share across threads);
    // an early stop is compared like the rest.
    assert!(batched.iter().any(|a| a.tokens.len() >= 3), "random weights should talk: {batched:?}");
    for (i, single_request) in requests(&model).into_iter().enumerate() {
        let single = model.generate(&[single_request], &config).unwrap();
        assert_eq!(single[0].tokens, batched[i].tokens, "request {i}");
        assert!((single[0].score - batched[i].score).abs() < 1e-4, "request {i}: {} vs {}", single[0].score, batched[i].score);
        assert!(single[0].score > 0.0 && single[0].score <= 1.0);
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed_and_respects_the_token_limit() {
    let mut model = tiny_model(3);
    let config = GenerationConfig {
        max_new_tokens: 5,
        sampling: Sampling::TopP { temperature: 1.5, top_p: 0.9 },
        stop_tokens: vec![],
        seed: Some(42),
        slots: None,
    };
    let a = model.generate(&requests(&model), &config).unwrap();
    let b = model.generate(&requests(&model), &config).unwrap();
    assert_eq!(a, b);
    assert!(a.iter().all(|answer| answer.tokens.len() <= 5));
    // A nucleus that holds only the top token is greedy decoding.
    let narrow = GenerationConfig { sampling: Sampling::TopP { temperature: 1.0, top_p: 1e-9 }, ..config.clone() };
    let narrow = model.generate(&requests(&model), &narrow).unwrap();
    let greedy = model.generate(&requests(&model), &greedy(5)).unwrap();
    assert_eq!(narrow.iter().map(|a| &a.tokens).collect::<Vec<_>>(), greedy.iter().map(|a| &a.tokens).collect::<Vec<_>>());
    let bad = GenerationConfig { sampling: Sampling::TopP { temperature: 0.0, top_p: 0.9 }, ..config };
    assert!(model.generate(&requests(&model), &bad).unwrap_err().to_string().contains("temperature"));
}

#[test]
fn merged_lora_answers_like_unmerged() {
    let mut model = tiny_model(4);
    randomise_new_modules(&model);
    let config = greedy(6);
    let before = model.generate(&requests(&model), &config).unwrap();
    model.merge_lora().unwrap();
    let after = model.generate(&requests(&model), &config).unwrap();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.tokens, a.tokens);
        assert!((b.score - a.score).abs() < 1e-4);
    }
}

#[test]
fn bad_requests_are_errors() {
    let mut model = tiny_model(5);
    let wrong_size =
        VlmRequest { pixels: tch::Tensor::zeros([3, 8, 8], (Kind::Float, Device::Cpu)), query: "x".into(), descriptions: vec![] };
    let err = model.generate(&[wrong_size], &greedy(2)).unwrap_err().to_string();
    assert!(err.contains("[3, 16, 16]"), "{err}");
    assert!(model.generate(&[], &greedy(2)).unwrap_err().to_string().contains("empty batch"));
    assert!(model.preprocess_rgb(&[0u8; 10], 4, 4).is_err());
    let wrong_rank =
        VlmRequest { pixels: tch::Tensor::zeros([16, 16], (Kind::Float, Device::Cpu)), query: "x".into(), descriptions: vec![] };
    let err = model.generate(&[wrong_rank], &greedy(2)).unwrap_err().to_string();
    assert!(err.contains("[16, 16]") && err.contains("[3, 16, 16]"), "{err}");
    // A query over its budget is refused, not cut; the batch it is in fails, the model goes on.
    let budget = model.config().max_query_tokens;
    let long_query = "forest ".repeat(budget as usize + 1);
    let mut batch = requests(&model);
    batch[1].query = long_query;
    let err = model.generate(&batch, &greedy(2)).unwrap_err();
    assert!(matches!(err, model::ModelError::Request { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("budget of {budget} (`max_query_tokens`)")), "{err}");
    assert_eq!(model.check_query(&batch[1].query).unwrap_err().to_string(), err.to_string(), "the check a stage runs first says the same");
    model.check_query(&batch[0].query).unwrap();
    assert_eq!(model.generate(&requests(&model), &greedy(2)).unwrap().len(), 3);
}

#[test]
fn answers_say_how_many_descriptions_fitted_the_budget() {
    let tokenizer = model::chat::ChatTokenizer::from_file(&tokenizer_path(), "x").unwrap();
    let harbour = "A blue harbour seen from above, with harbours nearby.";
    let budget = tokenizer.encode(harbour).unwrap().len();
    let short = ["A red forest.", "A river."];
    assert!(tokenizer.encode(&short.join("\n")).unwrap().len() <= budget, "both short descriptions fit together");
    let mut config = tiny_config();
    config.retrieval.max_semantic_tokens = budget as i64;
    let mut model = model::vlm::StrataModel::new(
        config,
        model::chat::ChatTokenizer::from_file(&tokenizer_path(), "x").unwrap(),
        Device::Cpu,
        Kind::Float,
        model::layers::ParamInit::Random,
    )
    .unwrap();
    let requests = vec![
        request(colour_image(&model, [200, 30, 30], 1), "What colour is the image?", &short),
        request(colour_image(&model, [30, 200, 30], 2), "Describe the image in detail.", &[]),
        request(colour_image(&model, [30, 30, 200], 3), "What is it?", &[harbour, "A river."]),
    ];
    let answers = model.generate(&requests, &greedy(2)).unwrap();
    // Both; none given; the harbour description fills the budget alone, the next is dropped whole.
    assert_eq!(answers.iter().map(|a| a.descriptions_used).collect::<Vec<_>>(), vec![2, 0, 1]);
}

#[test]
fn a_tokenizer_with_ids_past_the_vocabulary_is_refused() {
    let mut config = tiny_config();
    config.llm.vocab_size = 400;
    let tokenizer = model::chat::ChatTokenizer::from_file(&tokenizer_path(), &config.system_prompt).unwrap();
    let err = model::vlm::StrataModel::new(config, tokenizer, Device::Cpu, Kind::Float, model::layers::ParamInit::Random).unwrap_err();
    assert!(err.to_string().contains("token ids up to 460") && err.to_string().contains("vocab_size is 400"), "{err}");
}

#[test]
fn artifacts_round_trip_and_refuse_tampering() {
    let mut model = tiny_model(6);
    randomise_new_modules(&model);
    let expected = model.generate(&requests(&model), &greedy(4)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let provenance = Provenance { version: "tiny-2".into(), parent_version: Some("tiny-1".into()), training_run: Some("run-7".into()) };
    let manifest = artifact::save(&model, &tokenizer_path(), dir.path(), &provenance).unwrap();
    assert_eq!(manifest.files.len(), 3);
    assert_eq!(manifest.parent_version.as_deref(), Some("tiny-1"));

    let opened = Artifact::open(dir.path()).unwrap();
    assert_eq!(opened.manifest, manifest);
    let mut loaded = opened.load(Device::Cpu, Kind::Float).unwrap();
    let answers = loaded.generate(&requests(&loaded), &greedy(4)).unwrap();
    assert_eq!(answers, expected);

    // One flipped byte in the weights: refused, naming the file.
    let weights = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    let err = Artifact::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("does not match"), "{err}");
    bytes[last] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    Artifact::open(dir.path()).unwrap();

    // Unlisted weights beside the listed ones: refused.
    std::fs::write(dir.path().join("extra.safetensors"), b"x").unwrap();
    assert!(Artifact::open(dir.path()).unwrap_err().to_string().contains("not listed"));
    std::fs::remove_file(dir.path().join("extra.safetensors")).unwrap();

    // A missing file and a missing manifest.
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert!(Artifact::open(dir.path()).unwrap_err().to_string().contains("missing"));
    std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
    assert!(Artifact::open(dir.path()).unwrap_err().to_string().contains("manifest"));
}

#[test]
fn weights_that_do_not_fit_are_refused_with_names() {
    let model = tiny_model(7);
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("partial.safetensors");
    model::weights::save(model.var_store(), &partial, |name| !name.starts_with("model.layers.5.")).unwrap();
    let err = model::weights::load(model.var_store(), std::slice::from_ref(&partial), model::weights::LoadPolicy::Complete)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing") && err.contains("model.layers.5."), "{err}");

    // A base-checkpoint load tolerates extra tensors (a full SigLIP's text tower) but not a
    // wrong shape.
    let other = tiny_model_with_vocab(512);
    let full = dir.path().join("other.safetensors");
    model::weights::save(other.var_store(), &full, |_| true).unwrap();
    let err = model::weights::load(model.var_store(), &[full], model::weights::LoadPolicy::Complete).unwrap_err().to_string();
    assert!(err.contains("lm_head.weight") && err.contains("[512, 64]") && err.contains("[480, 64]"), "{err}");
    let err = model::weights::load(model.var_store(), &[dir.path().join("nope.safetensors")], model::weights::LoadPolicy::Complete)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.safetensors"), "{err}");
}

fn tiny_model_with_vocab(vocab: i64) -> model::vlm::StrataModel {
    let mut config = tiny_config();
    config.llm.vocab_size = vocab;
    let tokenizer = model::chat::ChatTokenizer::from_file(&tokenizer_path(), &config.system_prompt).unwrap();
    model::vlm::StrataModel::new(config, tokenizer, Device::Cpu, Kind::Float, model::layers::ParamInit::Random).unwrap()
}

#[test]
fn the_model_runs_in_bf16_the_gpu_dtype_with_masked_attention() {
    // bf16 is what GPUs run; masked attention scores must fit in it (a too-large mask value
    // made libtorch refuse the scalar). The CPU runs the same kernels' dtype rules.
    let mut model = tiny_model(5);
    randomise_new_modules(&model);
    let responses = vec!["red".to_owned(), "a green field".to_owned(), "harbour".to_owned()];
    let f32_loss = f64::try_from(model.loss(&requests(&model), &responses).unwrap()).unwrap();
    model.var_store_mut().bfloat16();
    let bf16_loss = f64::try_from(model.loss(&requests(&model), &responses).unwrap().to_kind(Kind::Float)).unwrap();
    assert!((bf16_loss - f32_loss).abs() < 0.05 * f32_loss.abs(), "bf16 {bf16_loss} vs f32 {f32_loss}");
    let greedy = GenerationConfig { max_new_tokens: 3, sampling: Sampling::Greedy, stop_tokens: Vec::new(), seed: None, slots: None };
    let answers = model.generate(&requests(&model), &greedy).unwrap();
    assert_eq!(answers.len(), 3);
    assert!(answers.iter().all(|a| a.score.is_finite() && a.score > 0.0));
}

#[test]
fn locate_queries_are_answered_in_the_box_grammar_beside_free_text_rows() {
    // Random weights: left alone they never write a box. Under the grammar every answer to a
    // `Locate:` query is boxes that parse, coordinates ordered, on the grid, in the same batch
    // as rows that answer freely.
    let mut model = tiny_model(4);
    randomise_new_modules(&model);
    let mut batch = requests(&model);
    for (seed, colour) in [(5, [90, 90, 90]), (6, [20, 120, 200]), (7, [200, 200, 90]), (8, [60, 160, 60])] {
        batch.push(request(colour_image(&model, colour, seed), &model::tasks::detect_prompt("ship"), &[]));
    }
    // A stop token outside the vocabulary: no row can stop, so every `Locate:` row must write
    // boxes whatever its random weights prefer (stopping at once is otherwise allowed).
    let config = GenerationConfig { stop_tokens: vec![i64::MAX], ..greedy(40) };
    let free = model.generate(&requests(&model), &config).unwrap();
    let answers = model.generate(&batch, &config).unwrap();
    for (i, answer) in answers.iter().enumerate().take(3) {
        assert_eq!(answer.tokens, free[i].tokens, "row {i} is free text, untouched by its neighbours' grammar");
    }
    for answer in &answers[3..] {
        let parsed = model::tasks::parse_boxes(&answer.text);
        assert!(!parsed.boxes.is_empty(), "no box in {:?}", answer.text);
        // A box cut by the token limit is the only possible error, and only at the end.
        assert!(parsed.errors.len() <= usize::from(!answer.complete), "{:?}: {:?}", answer.text, parsed.errors);
        for b in &parsed.boxes {
            assert!(b.x1 < b.x2 && b.y1 < b.y2 && b.x2 <= 1000 && b.y2 <= 1000, "{b:?} in {:?}", answer.text);
        }
        assert!(answer.score > 0.0 && answer.score <= 1.0, "the score is the model's own probability: {}", answer.score);
    }
    // Two decoding slots: rows wait and join as others finish, each keeping its grammar
    // state, and every answer is the one all-at-once decoding gave.
    let continuous = model.generate(&batch, &GenerationConfig { slots: Some(2), ..config }).unwrap();
    for (i, (a, b)) in continuous.iter().zip(&answers).enumerate() {
        assert_eq!(a.tokens, b.tokens, "row {i}");
        assert!((a.score - b.score).abs() < 1e-5, "row {i}: score {} vs {}", a.score, b.score);
    }
}
