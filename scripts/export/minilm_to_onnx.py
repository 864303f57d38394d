"""Exports a BERT sentence encoder (all-MiniLM-L6-v2: BERT, mean pooling, L2 normalisation)
from its Hugging Face safetensors to ONNX, building the graph node by node with the `onnx`
package, so no PyTorch is needed. Outputs: `last_hidden_state` [batch, tokens, d] and
`sentence_embedding` [batch, d] (masked mean of the last layer, L2-normalised), as
sentence-transformers computes them.

    python scripts/export/minilm_to_onnx.py MODEL_DIR OUT.onnx      # needs onnx, numpy, safetensors
"""
import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

model_dir, out_path = sys.argv[1], sys.argv[2]
config = json.load(open(f"{model_dir}/config.json"))
weights = load_file(f"{model_dir}/model.safetensors")
d, heads, layers = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
eps = float(config.get("layer_norm_eps", 1e-12))
head_dim = d // heads

nodes, inits = [], []
counter = [0]


def name(prefix):
    counter[0] += 1
    return f"{prefix}_{counter[0]}"


def const(value, prefix="c"):
    n = name(prefix)
    inits.append(numpy_helper.from_array(np.asarray(value), n))
    return n


def weight(key, transpose=False):
    value = weights[key].astype(np.float32)
    return const(value.T.copy() if transpose else value, key.replace(".", "_"))


def op(kind, inputs, **attrs):
    out = name(kind.lower())
    nodes.append(helper.make_node(kind, inputs, [out], **attrs))
    return out


def linear(x, prefix):
    return op("Add", [op("MatMul", [x, weight(f"{prefix}.weight", transpose=True)]), weight(f"{prefix}.bias")])


def layer_norm(x, prefix):
    return op("LayerNormalization", [x, weight(f"{prefix}.weight"), weight(f"{prefix}.bias")], axis=-1, epsilon=eps)


# Embeddings: word + position (0..T) + token type 0, then LayerNorm.
word = op("Gather", [weight("embeddings.word_embeddings.weight"), "input_ids"])
length = op("Gather", [op("Shape", ["input_ids"]), const(np.array(1, dtype=np.int64))], axis=0)
positions = op("Range", [const(np.array(0, dtype=np.int64)), length, const(np.array(1, dtype=np.int64))])
position = op("Gather", [weight("embeddings.position_embeddings.weight"), positions])
token_type = const(weights["embeddings.token_type_embeddings.weight"][0].astype(np.float32), "token_type_0")
x = layer_norm(op("Add", [op("Add", [word, position]), token_type]), "embeddings.LayerNorm")

# Additive mask [B, 1, 1, T]: 0 for real tokens, a large negative value for padding.
mask_float = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
additive = op("Mul", [op("Sub", [const(np.array(1.0, dtype=np.float32)), mask_float]), const(np.array(-1e9, dtype=np.float32))])
additive = op("Unsqueeze", [additive, const(np.array([1, 2], dtype=np.int64))])

split_shape = const(np.array([0, 0, heads, head_dim], dtype=np.int64))
merge_shape = const(np.array([0, 0, d], dtype=np.int64))
scale = const(np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
for i in range(layers):
    p = f"encoder.layer.{i}"
    q = op("Transpose", [op("Reshape", [linear(x, f"{p}.attention.self.query"), split_shape])], perm=[0, 2, 1, 3])
    k = op("Transpose", [op("Reshape", [linear(x, f"{p}.attention.self.key"), split_shape])], perm=[0, 2, 3, 1])
    v = op("Transpose", [op("Reshape", [linear(x, f"{p}.attention.self.value"), split_shape])], perm=[0, 2, 1, 3])
    scores = op("Add", [op("Mul", [op("MatMul", [q, k]), scale]), additive])
    context = op("MatMul", [op("Softmax", [scores], axis=-1), v])
    context = op("Reshape", [op("Transpose", [context], perm=[0, 2, 1, 3]), merge_shape])
    x = layer_norm(op("Add", [linear(context, f"{p}.attention.output.dense"), x]), f"{p}.attention.output.LayerNorm")
    hidden = linear(x, f"{p}.intermediate.dense")
    # Exact GELU: x · ½ · (1 + erf(x / √2)).
    gelu = op("Mul", [op("Mul", [hidden, const(np.array(0.5, dtype=np.float32))]),
                      op("Add", [const(np.array(1.0, dtype=np.float32)),
                                 op("Erf", [op("Div", [hidden, const(np.array(np.sqrt(2.0), dtype=np.float32))])])])])
    x = layer_norm(op("Add", [linear(gelu, f"{p}.output.dense"), x]), f"{p}.output.LayerNorm")
nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))

# Mean pooling over real tokens, then L2 normalisation (sentence-transformers' Normalize).
mask3 = op("Unsqueeze", [mask_float, const(np.array([2], dtype=np.int64))])
summed = op("ReduceSum", [op("Mul", [x, mask3]), const(np.array([1], dtype=np.int64))], keepdims=0)
count = op("Max", [op("ReduceSum", [mask3, const(np.array([1], dtype=np.int64))], keepdims=0), const(np.array(1e-9, dtype=np.float32))])
mean = op("Div", [summed, count])
norm = op("Max", [op("ReduceL2", [mean], axes=[1], keepdims=1), const(np.array(1e-12, dtype=np.float32))])
nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"]))

graph = helper.make_graph(
    nodes,
    "minilm",
    [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
     helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
    [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", d]),
     helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", d])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="strata")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, out_path)
print(f"wrote {out_path}")
