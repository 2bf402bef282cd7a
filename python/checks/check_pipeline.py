#!/usr/bin/env python3
"""Checks a pipeline folder written by moefy_export against VAR itself (its PyTorch code, in this process), with
ONNX Runtime running the graphs. Used by test/export-pipeline.test.ts, which asserts on the JSON this prints.

    check_pipeline.py checkpoints --var-code VAR --depth N --seed S [--patch-nums ..] [--shared-aln] [--vae V] -o DIR
        random weights (moefy_export's --random recipe) saved as plain state_dicts DIR/var.pth and, without --vae,
        DIR/vae.pth: the test's stand-ins for the published checkpoints
    check_pipeline.py compare --var-code VAR --ckpt var.pth --vae vae.pth --pipeline DIR [--image] [--seed S]
        the reference is VAR's build_vae_var + load_state_dict of the checkpoints (none of moefy_export's code):
        full graph vs VAR.forward (label dropout off: cond_drop_rate 0); the step chain fed the tokens that
        VAR.autoregressive_infer_cfg sampled (recorded by wrapping models.var.sample_with_top_k_top_p_) vs that
        run's guided logits per scale; the VQ graphs' f_hat vs VAR's; the decoder's image vs VAR's image; where the
        graphs keep their weights; random ops in the graphs
    check_pipeline.py repack --pipeline DIR -o OUT      transformer.data packing of one-file-per-tensor exports
    check_pipeline.py fake-vae --vocab V -o FILE        a VQVAE-looking state_dict of another vocabulary
Errors are max |a - b| / max |b| ("relative") or max |a - b| (images, in [0, 1])."""
import argparse
import contextlib
import json
import os
import sys

import numpy as np
import torch

CFG, TOP_K, TOP_P = 4.0, 900, 0.95  # VAR's demo settings


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def import_var(var_code):
    sys.path.insert(0, os.path.abspath(var_code))
    import models
    import models.var
    return models


def cmd_checkpoints(a):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
    from moefy_export.var_code import import_var_models
    from moefy_export.var_config import PATCH_NUMS_256
    from moefy_export.var_models import random_models
    models = import_var_models(a.var_code)
    m = random_models(models, a.depth, a.seed, a.patch_nums or PATCH_NUMS_256, a.shared_aln, a.vae)
    os.makedirs(a.o, exist_ok=True)
    torch.save(m.var.state_dict(), os.path.join(a.o, 'var.pth'))
    if a.vae is None:
        torch.save(m.vae.state_dict(), os.path.join(a.o, 'vae.pth'))
    print(json.dumps({'var': os.path.join(a.o, 'var.pth')}))


def cmd_fake_vae(a):
    """A state_dict that has the VQVAE's tell-tale tensors but another vocabulary (a mismatched VAE)."""
    torch.save({'quantize.embedding.weight': torch.zeros(a.vocab, 32),
                'decoder.conv_out.weight': torch.zeros(3, 160, 3, 3),
                **{f'quantize.quant_resi.qresi_ls.{k}.weight': torch.zeros(32, 32, 3, 3) for k in range(4)}}, a.o)
    print(json.dumps({'vae': a.o}))


def random_ops(folder, files):
    """Ops that draw random numbers, in the full and the step graph (VAR.forward's label dropout would bring some)."""
    import onnx
    return sorted({n.op_type for kind in ('full', 'step')
                   for n in onnx.load(os.path.join(folder, files[kind]), load_external_data=False).graph.node
                   if n.op_type.startswith('Random') or n.op_type in ('Bernoulli', 'Multinomial')})


def weights_layout(folder, files):
    """Where the full and the step graph keep their initializers: files named, alignment, bytes shared."""
    import onnx
    spans = {}
    for kind in ('full', 'step'):
        model = onnx.load(os.path.join(folder, files[kind]), load_external_data=False)
        spans[kind] = [{e.key: e.value for e in t.external_data} for t in model.graph.initializer
                       if t.data_location == onnx.TensorProto.EXTERNAL]
    full_offsets = {int(e['offset']) for e in spans['full']}
    return {
        'locations': sorted({e['location'] for k in spans for e in spans[k]}),
        'aligned': all(int(e['offset']) % 64 == 0 for k in spans for e in spans[k]),
        'fullBytes': sum(int(e['length']) for e in spans['full']),
        'stepBytes': sum(int(e['length']) for e in spans['step']),
        'stepBytesInFull': sum(int(e['length']) for e in spans['step'] if int(e['offset']) in full_offsets),
        'fileBytes': os.path.getsize(os.path.join(folder, 'transformer.data')),
    }


def cmd_repack(a):
    """The form of TorchScript's exports above 2 GB (one external file per tensor, which no small test model
    reaches), made from a pipeline's full graph and packed by moefy_export's SharedWeights: the packed graph must give
    the original graph's logits exactly. Then a graph of odd-sized tensors (VAR's are all multiples of 64 bytes), one
    of them twice: each at a 64-byte aligned offset, the repeated one stored once."""
    import onnx
    from onnx import helper, numpy_helper
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
    from moefy_export.shared_weights import SharedWeights
    src = os.path.join(a.pipeline, 'var_full.onnx')
    per_tensor, packed, odd = (os.path.join(a.o, n) for n in ('per-tensor', 'packed', 'odd'))
    for d in (per_tensor, packed, odd):
        os.makedirs(d)
    onnx.save(onnx.load(src), os.path.join(per_tensor, 'var_full.onnx'), save_as_external_data=True,
              all_tensors_to_one_file=False, size_threshold=0)
    SharedWeights(packed).add_graph(os.path.join(per_tensor, 'var_full.onnx'), os.path.join(packed, 'var_full.onnx'))
    g = torch.Generator().manual_seed(0)
    x_dims = onnx.load(src, load_external_data=False).graph.input[1].type.tensor_type.shape.dim
    feeds = {'label_B': torch.randint(0, 1000, (2,), generator=g).numpy(),
             'x_BLCv_wo_first_l': torch.randn(*[d.dim_value or 2 for d in x_dims], generator=g).numpy()}
    want = session(src).run(None, feeds)[0]
    got = session(os.path.join(packed, 'var_full.onnx')).run(None, feeds)[0]

    rng = np.random.default_rng(0)
    t1, t2 = rng.standard_normal(1001).astype(np.float32), rng.standard_normal(1003).astype(np.float32)
    inits = [numpy_helper.from_array(v, n) for v, n in ((t1, 't1'), (t2, 't2'), (t1.copy(), 't3'))]
    graph = helper.make_graph([helper.make_node('Concat', ['t1', 't2', 't3'], ['y'], axis=0)], 'odd', [],
                              [helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [3005])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)], ir_version=8)
    onnx.save(model, os.path.join(odd, 'in.onnx'))
    weights = SharedWeights(odd)
    weights.add_graph(os.path.join(odd, 'in.onnx'), os.path.join(odd, 'out.onnx'))
    spans = {t.name: {e.key: e.value for e in t.external_data}
             for t in onnx.load(os.path.join(odd, 'out.onnx'), load_external_data=False).graph.initializer}
    print(json.dumps({'perTensorFiles': len(os.listdir(per_tensor)) - 1, 'packedFiles': sorted(os.listdir(packed)),
                      'maxDiff': float(np.abs(got.astype(np.float64) - want).max()),
                      'oddOffsets': [int(spans[n]['offset']) for n in ('t1', 't2', 't3')],
                      'oddFileBytes': os.path.getsize(weights.path),
                      'oddExact': bool(np.array_equal(session(os.path.join(odd, 'out.onnx')).run(None, {})[0],
                                                      np.concatenate([t1, t2, t1])))}))


def session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])


def reference(a, manifest):
    models = import_var(a.var_code)
    v = manifest['var']
    sd = torch.load(a.ckpt, map_location='cpu', weights_only=True, mmap=True)
    vae_sd = torch.load(a.vae, map_location='cpu', weights_only=True, mmap=True)
    depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    patch_nums = tuple(a.patch_nums) if a.patch_nums else (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    with contextlib.redirect_stdout(sys.stderr):  # VAR prints its configuration; stdout is the JSON
        vae, var = models.build_vae_var(device='cpu', patch_nums=patch_nums, V=4096, Cvae=32, ch=160,
                                        share_quant_resi=4, num_classes=1000, depth=depth, shared_aln=a.shared_aln,
                                        attn_l2_norm=True, flash_if_available=False, fused_if_available=False)
    vae_sd['quantize.ema_vocab_hit_SV'] = vae.quantize.ema_vocab_hit_SV
    vae.load_state_dict(vae_sd, strict=True, assign=True)
    var.load_state_dict(sd, strict=True, assign=True)
    expected = {'depth': depth, 'patchNums': list(patch_nums), 'sharedAln': a.shared_aln, 'width': var.C,
                'heads': var.num_heads, 'vocab': var.V, 'cvae': var.Cvae}
    mismatched = sorted(k for k, want in expected.items() if v.get(k) != want)
    return models, var.eval(), vae.eval(), mismatched


def cmd_compare(a):
    with open(os.path.join(a.pipeline, 'moefy-pipeline.json')) as f:
        manifest = json.load(f)
    files = manifest['files']
    np_dtype = np.float16 if manifest['var']['dtype'] == 'float16' else np.float32
    with torch.no_grad():
        models, var, vae, mismatched = reference(a, manifest)
    out = {'manifestMismatch': mismatched, 'weights': weights_layout(a.pipeline, files),
           'randomOps': random_ops(a.pipeline, files)}
    g = torch.Generator().manual_seed(a.seed)
    B, S, pns = a.batch, len(var.patch_nums), var.patch_nums
    labels = torch.randint(0, var.num_classes, (B,), generator=g)

    # the full graph against VAR.forward
    with torch.no_grad():
        gt = [torch.randint(0, var.V, (B, p * p), generator=g) for p in pns]
        x = vae.quantize.idxBl_to_var_input(gt)
        var.cond_drop_rate = 0.0  # VAR.forward drops labels at random even in eval mode; the export must not
        ref = var(labels, x).numpy()
    full = session(os.path.join(a.pipeline, files['full']))
    feeds = {'label_B': labels.numpy(), 'x_BLCv_wo_first_l': x.numpy().astype(np_dtype)}
    got = full.run(None, feeds)[0]
    out['full'] = rel(got, ref)
    out['fullRepeat'] = float(np.abs(full.run(None, feeds)[0].astype(np.float64) - got).max())
    out['logitsMax'] = float(np.abs(ref).max())
    # the same check with the labels dropped (the null class): a graph that ignored the label would pass the first
    null = np.full(B, var.num_classes)
    got_null = full.run(None, {**feeds, 'label_B': null})[0]
    out['fullNullClass'] = rel(got_null, var(torch.from_numpy(null), x).numpy())
    out['labelEffect'] = rel(got_null, ref)
    del full

    # VAR's own sampling loop, recording what it sampled
    logits_rec, idx_rec, fhat_rec = [], [], []
    sampler = models.var.sample_with_top_k_top_p_

    def recording_sampler(logits_BlV, **kw):
        logits_rec.append(logits_BlV.clone())  # before the sampler masks it in place
        idx = sampler(logits_BlV, **kw)
        idx_rec.append(idx[:, :, 0].clone())
        return idx

    fhat_to_img = vae.fhat_to_img

    def recording_decoder(f_hat):
        fhat_rec.append(f_hat.clone())
        return fhat_to_img(f_hat) if a.image else torch.zeros(B, 3, 16 * pns[-1], 16 * pns[-1])

    models.var.sample_with_top_k_top_p_, vae.fhat_to_img = recording_sampler, recording_decoder
    with torch.no_grad():
        img = var.autoregressive_infer_cfg(B=B, label_B=labels, g_seed=a.seed, cfg=CFG, top_k=TOP_K, top_p=TOP_P)
    models.var.sample_with_top_k_top_p_, vae.fhat_to_img = sampler, fhat_to_img

    # the pipeline's chain fed those tokens
    step = session(os.path.join(a.pipeline, files['step']))
    vq = [session(os.path.join(a.pipeline, f)) for f in files['vqNextScale']]
    depth, heads, hd = var.depth, var.num_heads, var.C // var.num_heads
    past = {f'past_{w}_{i}': np.zeros((2 * B, heads, 0, hd), np_dtype) for i in range(depth) for w in ('key', 'value')}
    x_next = np.zeros((B, 1, var.Cvae), np.float32)
    f_hat = np.zeros((B, var.Cvae, pns[-1], pns[-1]), np.float32)
    chain = []
    for si in range(S):
        res = step.run(None, {'label_B': labels.numpy(), 'x_next_BlCv': x_next.astype(np_dtype),
                              'cfg': np.array(CFG * si / (S - 1), np.float32), **past})
        chain.append(rel(res[0], logits_rec[si].numpy()))
        names = [o.name for o in step.get_outputs()]
        past = {n.replace('present_', 'past_'): r for n, r in zip(names[1:], res[1:])}
        nxt = vq[si].run(None, {'f_hat': f_hat, 'idx_Bl': idx_rec[si].numpy()})
        f_hat = nxt[0]
        if si < S - 1:
            x_next = nxt[1]
    out['chain'] = chain
    out['cacheLength'] = int(next(iter(past.values())).shape[2])
    out['fhat'] = rel(f_hat, fhat_rec[0].numpy())
    if a.image:
        decoder = session(os.path.join(a.pipeline, files['decoder']))
        image = (decoder.run(None, {'f_hat': f_hat})[0] + 1) / 2
        out['image'] = float(np.abs(image.astype(np.float64) - img.numpy()).max())
        out['imageStd'] = float(img.numpy().std())
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest='cmd', required=True)
    f = sub.add_parser('fake-vae')
    f.add_argument('--vocab', type=int, required=True)
    f.add_argument('-o', required=True)
    r = sub.add_parser('repack')
    r.add_argument('--pipeline', required=True)
    r.add_argument('-o', required=True)
    for name in ('checkpoints', 'compare'):
        s = sub.add_parser(name)
        s.add_argument('--var-code', required=True)
        s.add_argument('--patch-nums', type=lambda t: tuple(int(v) for v in t.split(',')))
        s.add_argument('--shared-aln', action='store_true')
        s.add_argument('--seed', type=int, default=0)
        s.add_argument('--vae')
    c = sub.choices['checkpoints']
    c.add_argument('--depth', type=int, required=True)
    c.add_argument('-o', required=True)
    c = sub.choices['compare']
    c.add_argument('--ckpt', required=True)
    c.add_argument('--pipeline', required=True)
    c.add_argument('--batch', type=int, default=2)
    c.add_argument('--image', action='store_true')
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    {'checkpoints': cmd_checkpoints, 'compare': cmd_compare, 'fake-vae': cmd_fake_vae, 'repack': cmd_repack}[a.cmd](a)


if __name__ == '__main__':
    main()
