"""``make demo`` / ``python -m clsr_arch.demo``: the default shipped model (CLSR-IMDN-real x4) on one
photo as people have them (LocalSR paper Fig. 1: restore a few regions of interest cheaply).

Makes Set14 ``zebra.png`` from ``../shared/data`` into a JPEG-compressed LR photo (MATLAB
bicubic x1/4, then JPEG quality 30: ``data/make_degraded_sets.py``'s ``jpeg30``; ``--lr bicubic``
for the paper's clean LR instead) and runs the inference command (:mod:`clsr_arch.infer`) on a
few 24x24 ROIs with ``--compare`` against the HR. Prints where the comparison figure is and the
PSNR of every method (bicubic, pre-crop, CLSR, post-crop) on each ROI.
"""
import argparse
import os
import os.path as osp
import sys

from clsr_arch import api, infer

REPO = infer.REPO
DEFAULT_IMAGE = osp.join(REPO, osp.pardir, 'shared', 'data', 'Set14', 'HR', 'zebra.png')
# LR pixels (x, y, w, h) of zebra's 146x97 LR: body and neck stripes, head, legs (stripes cross
# the ROI borders, where the context counts)
DEFAULT_ROIS = ('34,14,24,24', '80,16,24,24', '112,48,24,24', '28,52,24,24')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--image', default=DEFAULT_IMAGE, help='an HR image (made LR with --degrade)')
    p.add_argument('--roi', action='append', help=f'x,y,w,h in LR pixels (default: {" ".join(DEFAULT_ROIS)})')
    p.add_argument('--out', default=osp.join(REPO, 'results', 'demo'))
    p.add_argument('--model', default=api.DEFAULT_MODEL, choices=sorted(api.SHIPPED))
    p.add_argument('--lr', default='jpeg30', choices=('jpeg30', 'bicubic', 'realesrgan', 'noise10', 'blur1.6'),
                   help='how the LR is made from the HR (default jpeg30: a JPEG photo; bicubic: the paper)')
    args = p.parse_args(argv)
    if not osp.isfile(args.image):
        print(f'demo: error: {args.image} missing (../shared/data must sit beside the repository)', file=sys.stderr)
        return 2
    if args.lr == 'bicubic':
        cli = [args.image, '--degrade']
    else:  # the LR photo and its HR, made as the degraded test sets are (seed 0)
        from clsr_arch.data.degraded_sets import degrade_image, image_seed
        from clsr_arch.data.image_io import atomic_imwrite, read_bgr8
        from clsr_arch.data.prep import mod_crop
        stem = osp.splitext(osp.basename(args.image))[0]
        hr = mod_crop(read_bgr8(args.image), 4)
        lr, _ = degrade_image(hr, args.lr, 4, image_seed(0, args.lr, stem))
        os.makedirs(args.out, exist_ok=True)
        lr_path, hr_path = osp.join(args.out, f'{stem}_{args.lr}.png'), osp.join(args.out, f'{stem}_hr.png')
        atomic_imwrite(lr, lr_path)
        atomic_imwrite(hr, hr_path)
        cli = [lr_path, '--hr', hr_path]
    cli += ['--compare', '--out', args.out, '--model', args.model, '--quiet']
    for r in args.roi or DEFAULT_ROIS:
        cli += ['--roi', r]
    try:
        result = infer.infer(infer.build_parser().parse_args(cli))
    except infer.InferError as err:
        print(f'demo: error: {err}', file=sys.stderr)
        return 2
    print(f'comparison figure: {result["figure"]}')
    print(f'{osp.basename(args.image)} (LR {args.lr} {result["lr_size"][0]}x{result["lr_size"][1]}, x{result["scale"]}, '
          f'model {args.model}), PSNR on the Y channel per ROI (dB), GFLOPs per ROI:')
    header = f'{"ROI (x,y,w,h)":16s}' + ''.join(f'{infer.LABELS[m]:>14s}' for m in infer.METHODS)
    print(header)
    for r in result['rois']:
        print(f'{",".join(map(str, r["box"])):16s}'
              + ''.join(f'{r["methods"][m]["psnr_y"]:14.2f}' for m in infer.METHODS))
    print(f'{"mean":16s}' + ''.join(f'{result["mean"][m]["psnr_y"]:14.2f}' for m in infer.METHODS))
    print(f'{"GFLOPs":16s}' + ''.join(f'{result["rois"][0]["methods"][m]["gflops"]:14.3g}' for m in infer.METHODS))
    return 0


if __name__ == '__main__':
    sys.exit(main())
