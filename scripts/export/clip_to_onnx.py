"""Exports a CLIP model (Hugging Face `CLIPModel` safetensors: openai/clip-vit-*, RemoteCLIP,
GeoRSCLIP and the like) to the two ONNX encoders the retriever runs through ONNX Runtime,
building each graph node by node with the `onnx` package, so no PyTorch is needed:

  OUT_DIR/image_model.onnx  pixel_values [batch, 3, H, W] -> image_embeds [batch, P], L2-normalised
  OUT_DIR/model.onnx        input_ids, attention_mask [batch, tokens] -> sentence_embedding [batch, P],
                            L2-normalised (the text tower; same interface as the sentence encoder)

and copies config.json, tokenizer.json and preprocessor_config.json next to them, so OUT_DIR is
an encoder directory for `strata index build --encoder` and `strata index search --image`.

    python scripts/export/clip_to_onnx.py MODEL_DIR OUT_DIR      # needs onnx, numpy, safetensors
"""
import json
import pathlib
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

model_dir, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
config = json.load(open(model_dir / "config.json"))
weights = load_file(str(model_dir / "model.safetensors"))
out_dir.mkdir(parents=True, exist_ok=True)


class Graph:
    """Collects nodes and initialisers for one ONNX graph."""

    def __init__(self):
        self.nodes, self.inits, self.counter = [], [], 0

    def name(self, prefix):
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, value, prefix="c"):
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def weight(self, key, transpose=False):
        value = weights[key].astype(np.float32)
        return self.const(value.T.copy() if transpose else value, key.replace(".", "_"))

    def op(self, kind, inputs, **attrs):
        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def f32(self, value):
        return self.const(np.array(value, dtype=np.float32))

    def i64(self, value):
        return self.const(np.array(value, dtype=np.int64))

    def linear(self, x, prefix, bias=True):
        y = self.op("MatMul", [x, self.weight(f"{prefix}.weight", transpose=True)])
        return self.op("Add", [y, self.weight(f"{prefix}.bias")]) if bias else y

    def layer_norm(self, x, prefix, eps):
        return self.op("LayerNormalization", [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")], axis=-1, epsilon=eps)

    def activation(self, x, kind):
        if kind == "quick_gelu":  # x * sigmoid(1.702 x), OpenAI CLIP
            return self.op("Mul", [x, self.op("Sigmoid", [self.op("Mul", [x, self.f32(1.702)])])])
        if kind == "gelu":  # exact: x * 0.5 * (1 + erf(x / sqrt 2))
            erf = self.op("Erf", [self.op("Div", [x, self.f32(np.sqrt(2.0))])])
            return self.op("Mul", [self.op("Mul", [x, self.f32(0.5)]), self.op("Add", [self.f32(1.0), erf])])
        raise SystemExit(f"hidden_act {kind!r} is not supported (quick_gelu or gelu)")

    def encoder(self, x, prefix, tower, additive_mask=None):
        """Pre-LayerNorm transformer layers, as CLIPEncoderLayer."""
        d, heads = tower["hidden_size"], tower["num_attention_heads"]
        head_dim, eps = d // heads, float(tower.get("layer_norm_eps", 1e-5))
        split = self.i64([0, 0, heads, head_dim])
        merge = self.i64([0, 0, d])
        scale = self.f32(head_dim ** -0.5)
        for i in range(tower["num_hidden_layers"]):
            p = f"{prefix}.encoder.layers.{i}"
            h = self.layer_norm(x, f"{p}.layer_norm1", eps)
            q = self.op("Transpose", [self.op("Reshape", [self.linear(h, f"{p}.self_attn.q_proj"), split])], perm=[0, 2, 1, 3])
            k = self.op("Transpose", [self.op("Reshape", [self.linear(h, f"{p}.self_attn.k_proj"), split])], perm=[0, 2, 3, 1])
            v = self.op("Transpose", [self.op("Reshape", [self.linear(h, f"{p}.self_attn.v_proj"), split])], perm=[0, 2, 1, 3])
            scores = self.op("Mul", [self.op("MatMul", [q, k]), scale])
            if additive_mask is not None:
                scores = self.op("Add", [scores, additive_mask])
            context = self.op("MatMul", [self.op("Softmax", [scores], axis=-1), v])
            context = self.op("Reshape", [self.op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
            x = self.op("Add", [x, self.linear(context, f"{p}.self_attn.out_proj")])
            h = self.layer_norm(x, f"{p}.layer_norm2", eps)
            h = self.linear(self.activation(self.linear(h, f"{p}.mlp.fc1"), tower.get("hidden_act", "quick_gelu")), f"{p}.mlp.fc2")
            x = self.op("Add", [x, h])
        return x

    def l2_normalise(self, x, output):
        norm = self.op("Max", [self.op("ReduceL2", [x], axes=[1], keepdims=1), self.f32(1e-12)])
        self.nodes.append(helper.make_node("Div", [x, norm], [output]))

    def save(self, name, inputs, outputs, path):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="strata")
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        print(f"wrote {path}")


vision, text = config["vision_config"], config["text_config"]
projection = config.get("projection_dim", 512)

# --- image tower: patches (conv, no bias) + class token + positions, pre-LN, encoder, CLS, post-LN, projection.
g = Graph()
side, patch, d = vision["image_size"], vision["patch_size"], vision["hidden_size"]
patches = g.op("Conv", ["pixel_values", g.weight("vision_model.embeddings.patch_embedding.weight")], strides=[patch, patch])
patches = g.op("Transpose", [g.op("Reshape", [patches, g.i64([0, d, -1])])], perm=[0, 2, 1])  # [B, N, d]
batch = g.op("Gather", [g.op("Shape", ["pixel_values"]), g.i64(0)], axis=0)
class_shape = g.op("Concat", [g.op("Unsqueeze", [batch, g.i64([0])]), g.i64([1, d])], axis=0)
class_token = g.op("Expand", [g.op("Reshape", [g.weight("vision_model.embeddings.class_embedding"), g.i64([1, 1, d])]), class_shape])
x = g.op("Concat", [class_token, patches], axis=1)
x = g.op("Add", [x, g.op("Unsqueeze", [g.weight("vision_model.embeddings.position_embedding.weight"), g.i64([0])])])
eps = float(vision.get("layer_norm_eps", 1e-5))
x = g.layer_norm(x, "vision_model.pre_layrnorm", eps)
x = g.encoder(x, "vision_model", vision)
cls = g.op("Gather", [x, g.i64(0)], axis=1)
cls = g.layer_norm(cls, "vision_model.post_layernorm", eps)
g.l2_normalise(g.linear(cls, "visual_projection", bias=False), "image_embeds")
g.save(
    "clip_image",
    [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, side, side])],
    [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", projection])],
    out_dir / "image_model.onnx",
)

# --- text tower: tokens + positions, causal + padding mask, encoder, final LN, EOS token, projection.
g = Graph()
d = text["hidden_size"]
x = g.op("Gather", [g.weight("text_model.embeddings.token_embedding.weight"), "input_ids"])
length = g.op("Gather", [g.op("Shape", ["input_ids"]), g.i64(1)], axis=0)
positions = g.op("Range", [g.i64(0), length, g.i64(1)])
x = g.op("Add", [x, g.op("Gather", [g.weight("text_model.embeddings.position_embedding.weight"), positions])])
# Additive mask [B, 1, T, T]: key j is hidden from query i when j > i or j is padding.
rows = g.op("Unsqueeze", [positions, g.i64([1])])
cols = g.op("Unsqueeze", [positions, g.i64([0])])
future = g.op("Cast", [g.op("Greater", [cols, rows])], to=TensorProto.FLOAT)  # [T, T]
padding = g.op("Sub", [g.f32(1.0), g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)])  # [B, T]
padding = g.op("Unsqueeze", [padding, g.i64([1, 2])])  # [B, 1, 1, T]
hidden = g.op("Max", [g.op("Unsqueeze", [future, g.i64([0, 1])]), padding])
additive = g.op("Mul", [hidden, g.f32(-1e9)])
x = g.encoder(x, "text_model", text, additive)
x = g.layer_norm(x, "text_model.final_layer_norm", float(text.get("layer_norm_eps", 1e-5)))
eos = text.get("eos_token_id", 2)
if eos == 2:
    # Checkpoints from before transformers PR #24773: the end token is the highest id.
    position = g.op("ArgMax", [g.op("Cast", ["input_ids"], to=TensorProto.INT32)], axis=1, keepdims=0)
else:
    # The first end token.
    position = g.op("ArgMax", [g.op("Cast", [g.op("Equal", ["input_ids", g.i64(eos)])], to=TensorProto.INT32)], axis=1, keepdims=0)
one_hot = g.op("Cast", [g.op("Equal", [g.op("Unsqueeze", [position, g.i64([1])]), cols])], to=TensorProto.FLOAT)  # [B, T]
pooled = g.op("ReduceSum", [g.op("Mul", [x, g.op("Unsqueeze", [one_hot, g.i64([2])])]), g.i64([1])], keepdims=0)
g.l2_normalise(g.linear(pooled, "text_projection", bias=False), "sentence_embedding")
g.save(
    "clip_text",
    [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
     helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
    [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", projection])],
    out_dir / "model.onnx",
)

for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
    if (model_dir / name).exists():
        if (model_dir / name).resolve() != (out_dir / name).resolve():
            shutil.copyfile(model_dir / name, out_dir / name)
    elif name != "config.json":
        raise SystemExit(f"{model_dir / name} is missing: the encoder directory needs it")
