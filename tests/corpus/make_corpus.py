"""Generate the corpus of bad and awkward models (never committed as binaries): ``build_corpus(folder)``.

Each case maps to the exit codes a correct tool may give: 0 (a correct model comes out) or 2/3 (one line naming the
problem). Run as a script to write the corpus to a folder: ``python tests/corpus/make_corpus.py OUT``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OK = {0}
BAD = {3}
OK_OR_BAD = {0, 3}


def _model(nodes, inputs, outputs, inits=(), opset=17, ir=8, functions=(), elem=TensorProto.FLOAT):
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, e if isinstance(e, int) else elem, s) for n, s, *e_ in inputs
         for e in ([e_[0]] if e_ else [elem])],
        [helper.make_tensor_value_info(n, e if isinstance(e, int) else elem, s) for n, s, *e_ in outputs
         for e in ([e_[0]] if e_ else [elem])],
        list(inits),
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], functions=list(functions))
    m.ir_version = ir
    return m


def _w(shape, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(dtype)


def _conv_bn(dtype=np.float32, elem=TensorProto.FLOAT, batch=1, hw=(8, 8)):
    inits = [numpy_helper.from_array(_w((4, 3, 3, 3), dtype=dtype), "w")]
    for name, v in (("g", 1.2), ("b", 0.1), ("m", 0.05), ("v", 0.9)):
        inits.append(numpy_helper.from_array(np.full(4, v, dtype), name))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"])]
    return _model(nodes, [("x", [batch, 3, *hw], elem)], [("y", [batch, 4, *hw], elem)], inits, elem=elem)


def build_corpus(folder: str | os.PathLike) -> dict[str, tuple[Path, set[int]]]:
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, set[int]]] = {}

    def add(name, data, expect):
        p = d / f"{name}.onnx"
        p.write_bytes(data if isinstance(data, bytes) else data.SerializeToString())
        cases[name] = (p, expect)
        return p

    good = _conv_bn()
    add("good_conv_bn", good, OK)
    add("empty_file", b"", BAD)
    add("random_bytes", np.random.default_rng(1).bytes(4096), BAD)
    add("truncated", good.SerializeToString()[:300], BAD)
    add("tensor_not_model", numpy_helper.from_array(_w((4, 4)), "t").SerializeToString(), BAD)
    add("text_file", b"this is not a model\n" * 10, BAD)

    cyc = _model([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
                 [("x", [1, 4])], [("b", [1, 4])])
    add("cycle", cyc, BAD)
    add("dangling_input", _model([helper.make_node("Add", ["x", "ghost"], ["y"])], [("x", [1, 4])],
                                 [("y", [1, 4])]), BAD)
    add("empty_required_input", _model([helper.make_node("Concat", ["x", ""], ["y"], axis=1)], [("x", [1, 4])],
                                       [("y", [1, 4])]), BAD)
    add("empty_optional_input", _model([helper.make_node("Clip", ["x", "", "hi"], ["y"])], [("x", [1, 4])],
                                       [("y", [1, 4])], inits=[numpy_helper.from_array(np.float32(0.5), "hi")]),
        OK)
    two = _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["y"])],
                 [("x", [1, 4])], [("y", [1, 4])])
    add("two_writers", two, BAD)
    add("future_opset", _model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])],
                               opset=99), BAD)
    add("future_ir_version", _model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])],
                                    ir=99), BAD)
    add("unknown_op_default_domain", _model([helper.make_node("FrobnicateX", ["x"], ["y"])], [("x", [1, 4])],
                                            [("y", [1, 4])]), BAD)
    custom = _model([helper.make_node("Frob", ["x"], ["y"], domain="com.example")], [("x", [1, 4])], [("y", [1, 4])])
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    add("unknown_domain", custom, OK_OR_BAD)
    bad_w = _model([helper.make_node("Conv", ["x", "w"], ["y"])], [("x", [1, 3, 8, 8])], [("y", [1, 4, 6, 6])],
                   [numpy_helper.from_array(_w((4, 5, 3, 3)), "w")])
    add("conv_weight_mismatch", bad_w, BAD)
    zero_group = _conv_bn()
    zero_group.graph.node[0].attribute.append(helper.make_attribute("group", 0))
    add("conv_group_zero", zero_group, BAD)
    # a node name that is not UTF-8 (protobuf hands such strings back as bytes)
    named = _conv_bn()
    named.graph.node[0].name = "conv_NAME_"
    add("name_not_utf8", named.SerializeToString().replace(b"conv_NAME_", b"conv\xae\xffNAME"), BAD)
    add("bool_input", _model([helper.make_node("Not", ["x"], ["y"])], [("x", [1, 4], TensorProto.BOOL)],
                             [("y", [1, 4], TensorProto.BOOL)]), OK)
    add("string_input", _model([helper.make_node("Identity", ["x"], ["y"])], [("x", [1, 2], TensorProto.STRING)],
                               [("y", [1, 2], TensorProto.STRING)]), OK_OR_BAD)
    add("fp16_conv_bn", _conv_bn(np.float16, TensorProto.FLOAT16), OK_OR_BAD)  # quant needs float32
    bf = _model([helper.make_node("Cast", ["x"], ["c"], to=TensorProto.BFLOAT16),
                 helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)],
                [("x", [1, 4])], [("y", [1, 4])])
    add("bf16_ops", bf, OK_OR_BAD)
    add("dynamic_batch", _conv_bn(batch="N"), OK)
    add("dynamic_hw", _conv_bn(hw=("H", "W")), OK_OR_BAD)  # passes that need data may refuse
    add("zero_size_dim", _model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 0, 4])], [("y", [1, 0, 4])]),
        OK_OR_BAD)
    nan = _conv_bn()
    w = numpy_helper.to_array(nan.graph.initializer[0]).copy()
    w[0, 0, 0, 0] = np.nan
    w[1, 0, 0, 0] = np.inf
    nan.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    add("nan_inf_weights", nan, OK_OR_BAD)
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    iff = _model([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                  helper.make_node("Greater", ["s", "zero"], ["cond"]),
                  helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
                 [("x", [1, 4])], [("y", [1, 4])], [numpy_helper.from_array(np.array(0, np.float32), "zero")])
    add("if_subgraph", iff, OK)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "x"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 4])])
    loop = _model([helper.make_node("Loop", ["trips", "keep", "x"], ["y"], body=body)], [("x", [1, 4])],
                  [("y", [1, 4])], [numpy_helper.from_array(np.array(3, np.int64), "trips"),
                                    numpy_helper.from_array(np.array(True), "keep")])
    add("loop_subgraph", loop, OK)
    fn = helper.make_function("local", "MyRelu", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    fmodel = _model([helper.make_node("MyRelu", ["x"], ["y"], domain="local")], [("x", [1, 4])], [("y", [1, 4])],
                    functions=[fn])
    fmodel.opset_import.append(helper.make_opsetid("local", 1))
    add("local_function", fmodel, OK)
    add("no_nodes", _model([], [("x", [1, 4])], [("x", [1, 4])]), OK_OR_BAD)
    return cases


if __name__ == "__main__":
    for name, (path, expect) in build_corpus(sys.argv[1] if len(sys.argv) > 1 else "corpus").items():
        print(f"{name:28s} {sorted(expect)} {path}")
