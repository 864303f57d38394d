//! The ort path on real weights: all-MiniLM-L6-v2 (exported to ONNX by `scripts/setup.sh`)
//! embeds the OpenStreetMap iD presets, and remote-sensing queries retrieve the right ones.

use model::encoders::TextEncoder;
use retrieval::{build_index, BuildOptions, SearchMode, SemanticIndex};

fn assets() -> std::path::PathBuf {
    TextEncoder::default_dir().parent().expect("assets dir").to_owned()
}

#[test]
fn remote_sensing_queries_retrieve_the_right_osm_presets() {
    let mut encoder = TextEncoder::load(&TextEncoder::default_dir(), 256, 2).expect("encoder (run scripts/setup.sh)");
    assert_eq!(encoder.dim(), 384);
    let dir = tempfile::tempdir().unwrap();
    let report =
        build_index(&[assets().join("osm-presets/descriptions.jsonl")], dir.path(), &mut encoder, &BuildOptions::default(), &mut |_, _| {})
            .unwrap();
    assert!(report.count > 1500);
    let index = SemanticIndex::open(dir.path(), model::tch::Device::Cpu).unwrap();
    // (query, expected id, best rank it must reach), read from what a remote-sensing analyst
    // would accept as the right OSM feature.
    let expectations = [
        ("harbour with ships", "osm:landuse/harbour", 1),
        ("harbour with ships", "osm:leisure/marina", 3),
        ("airport with runways and planes", "osm:aeroway/aerodrome", 1),
        ("airport with runways and planes", "osm:aeroway/runway", 5),
        ("a football pitch", "osm:leisure/pitch/soccer", 2),
        ("rows of solar panels", "osm:power/generator/method/photovoltaic", 1),
        ("a wastewater treatment plant", "osm:man_made/wastewater_plant", 2),
        ("dense forest", "osm:natural/wood", 3),
        ("dense forest", "osm:landuse/forest", 5),
        ("a parking lot with cars", "osm:amenity/parking", 3),
    ];
    for (query, id, rank) in expectations {
        let q = encoder.encode(&[query.to_owned()]).unwrap();
        let exact = index.search(&q, 5, SearchMode::Exact).unwrap().remove(0);
        let ids: Vec<&str> = exact.iter().map(|h| index.description(h.row).id.as_str()).collect();
        let found = ids.iter().position(|i| *i == id).map(|p| p + 1);
        assert!(found.is_some_and(|r| r <= rank), "`{query}`: `{id}` must be within the top {rank}, got {ids:?}");
        assert!(exact.windows(2).all(|w| w[0].score >= w[1].score), "scores must be sorted");
        // The graph at its default ef finds the best hit among its five and misses at most one
        // of the exact five. (Not "the same first hit": USearch builds the graph on several
        // threads, so two builds differ, and near-ties may swap.)
        let ann = index.search(&q, 5, SearchMode::Approximate { ef: retrieval::index::DEFAULT_EF }).unwrap().remove(0);
        assert!(ann.iter().any(|h| h.row == exact[0].row), "`{query}`: the graph missed the best hit");
        let shared = ann.iter().filter(|h| exact.iter().any(|e| e.row == h.row)).count();
        assert!(shared >= 4, "`{query}`: the graph found {shared} of the exact top 5");
    }
    // What the prompter receives: the texts, best first.
    let q = encoder.encode(&["harbour with ships".to_owned()]).unwrap();
    let texts = index.descriptions_for(&q[0], 2, SearchMode::Exact).unwrap();
    assert!(texts[0].starts_with("Harbor"), "{texts:?}");
}

#[test]
fn the_onnx_export_matches_the_bert_encoder_in_tch() {
    use model::tch::{nn, Kind, Tensor};
    let dir = TextEncoder::default_dir();
    let mut encoder = TextEncoder::load(&dir, 256, 2).unwrap();
    let texts = vec!["a harbour with many boats".to_owned(), "Rows of solar panels on a roof.".to_owned(), "forest".to_owned()];
    let onnx = encoder.encode(&texts).unwrap();
    let config = model::bert::BertConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vs = nn::VarStore::new(model::tch::Device::Cpu);
    let bert = model::bert::BertModel::new(&vs.root(), &config);
    model::weights::load(&vs, &[dir.join("model.safetensors")], model::weights::LoadPolicy::Required(&["embeddings.", "encoder."]))
        .unwrap();
    for (text, from_onnx) in texts.iter().zip(&onnx) {
        let ids: Vec<i64> = encoder.token_ids(text).unwrap().into_iter().map(i64::from).collect();
        let n = ids.len() as i64;
        let hidden = model::tch::no_grad(|| {
            bert.forward(&Tensor::from_slice(&ids).view([1, n]), &Tensor::ones([1, n], (Kind::Int64, model::tch::Device::Cpu)), None)
        });
        let mean = hidden.mean_dim(1, false, Kind::Float);
        let normalised = &mean / mean.norm();
        let reference = Vec::<f32>::try_from(normalised.view([-1])).unwrap();
        let worst = reference.iter().zip(from_onnx).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "`{text}`: ONNX and tch differ by {worst}");
    }
}
