"""CLSRModel: training and ROI-grid evaluation for LocalSR (the paper's Sec. 3.5 and Sec. 4.1).

A subclass of BasicSR's :class:`~basicsr.models.sr_model.SRModel` that overrides only what
LocalSR changes:

* **Training** (Sec. 3.5, Eq. 7): batches are LR context crops with one ROI each; the loss is
  ``L = pixel_opt(y^, y) + lambda(t) * context_opt(Y^_P, Y)`` where ``y^`` is the restored ROI,
  ``Y^_P`` the PIM's restored HR context and ``lambda(t)`` follows ``train.lambda_schedule``
  (:mod:`clsr_arch.models.lambda_schedule`; paper: 0.5 decaying to 0). When ``lambda == 0``
  ``Y^_P`` is not computed at all.
* **Evaluation** (Sec. 4.1, "Inference" of Sec. 3.5): the whole LR image is the context and
  every ROI of a non-overlapping grid is super-resolved; all ROIs of one image share one
  context pass (``encode_context`` once, ``decode`` in chunks). PSNR/SSIM are BasicSR's
  metrics computed per ROI (the paper does not crop ROI borders) and averaged over all ROIs
  of the dataset, not per image.
* **Real-world degradations** (issue 21): when the training dataset has a ``degradation``
  block, batches carry HR contexts and Real-ESRGAN kernels; ``feed_data`` degrades each whole
  HR context once on the model's device (:mod:`clsr_arch.data.degradation`) and the ROI is
  cropped from that LR context, so ROI and context share one degradation.
* **Plain backbones train too** (the real-world base of issue 21, like Real-ESRNet): ``network_g``
  a plain BasicSR arch is trained with ``pixel_opt`` on the whole LR context against the HR
  context, and validated per ROI with ``val.mode`` pre_crop/post_crop.
* **Baselines** of Table 1 with the same protocol (``val.mode``): ``pre_crop`` runs the plain
  backbone on the ROI alone (optionally with ``val.pre_crop_pad`` LR pixels of real context,
  cropped back); ``post_crop`` runs it on the whole image and crops the ROI. ``network_g`` may
  be a plain BasicSR arch (its checkpoint loads unchanged) or a CLSR network (its ``base``).
  ``bicubic`` (reference row, no network used) upsamples each ROI alone with BasicSR's
  MATLAB-compatible ``imresize``.
"""
import csv
import json
import math
import os
import os.path as osp
from collections import OrderedDict

import torch
from tqdm import tqdm

from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import MODEL_REGISTRY

from clsr_arch.archs import roi as roi_ops
from clsr_arch.archs.backbone_adapters import get_adapter, run_backbone
from clsr_arch.data.degradation import Degrader

from .lambda_schedule import LambdaSchedule

VAL_MODES = ('clsr', 'pre_crop', 'post_crop', 'bicubic')


def is_clsr_net(net):
    """True for a CLSR network (the contract of docs/design.md), False for a plain backbone."""
    return all(hasattr(net, name) for name in ('encode_context', 'decode', 'base'))


def check_boxes(rois, lq_shape, where):
    """``rois`` [R, 4] (x, y, w, h) of the single context ``lq_shape``, checked by
    ``roi.validate_boxes``; the ValueError also names the offending image."""
    boxes = torch.cat([torch.zeros(len(rois), 1, dtype=torch.long), rois], 1)
    try:
        roi_ops.validate_boxes(boxes, (1,) + tuple(lq_shape[1:]))
    except ValueError as err:
        raise ValueError(f'{where}: {err}') from None


def size_multiple_of(backbone):
    """Input-size multiple a plain backbone needs (SwinIR: its window), from its CLSR stage
    adapter; 1 for archs without one (any convolutional BasicSR arch)."""
    try:
        return int(get_adapter(backbone).multiple)
    except ValueError:
        return 1


class MetricAverager:
    """Per-ROI metric values averaged over every ROI of a dataset (not per image).

    A ROI restored exactly has infinite PSNR; averaging it would make the dataset mean infinite,
    so infinite values are left out of the mean and counted (``num_inf``) to be reported.
    """

    def __init__(self, names):
        self.names = list(names)
        self.sums = {n: 0.0 for n in self.names}
        self.counts = {n: 0 for n in self.names}
        self.num_inf = {n: 0 for n in self.names}
        self.num_rois = 0

    def add(self, values):
        self.num_rois += 1
        for n in self.names:
            v = float(values[n])
            if math.isinf(v):
                self.num_inf[n] += 1
            else:
                self.sums[n] += v
                self.counts[n] += 1

    def means(self):
        return {n: (self.sums[n] / self.counts[n] if self.counts[n] else float('nan')) for n in self.names}


@MODEL_REGISTRY.register()
class CLSRModel(SRModel):
    """LocalSR model: ROI + context loss training, ROI-grid validation, pre/post-crop baselines."""

    def __init__(self, opt):
        super().__init__(opt)
        self.is_clsr = is_clsr_net(self.get_bare_model(self.net_g))
        val_opt = opt.get('val') or {}
        self.val_mode = val_opt.get('mode', 'clsr' if self.is_clsr else None)
        if self.val_mode not in VAL_MODES:
            raise ValueError(f'val.mode must be one of {VAL_MODES}, got {self.val_mode!r}'
                             + ('' if self.is_clsr else f' (network_g {opt["network_g"]["type"]} is a plain '
                                'backbone: set val.mode to pre_crop or post_crop)'))
        if self.val_mode == 'clsr' and not self.is_clsr:
            raise ValueError(f'val.mode clsr needs a CLSR network, but network_g is '
                             f'{opt["network_g"]["type"]}: use pre_crop or post_crop')
        bare = self.get_bare_model(self.net_g)
        # default: the padding CLSR's own base branch uses, so that CLSR at initialisation equals
        # this baseline ("padding is considered in this comparison", Sec. 4.2)
        self.pre_crop_pad = int(val_opt.get('pre_crop_pad', bare.roi_pad if self.is_clsr else 0))
        if self.pre_crop_pad < 0:
            raise ValueError(f'val.pre_crop_pad must be >= 0, got {self.pre_crop_pad}')
        self.roi_chunk = int(val_opt.get('roi_chunk', 64))
        if self.roi_chunk < 1:
            raise ValueError(f'val.roi_chunk must be >= 1, got {self.roi_chunk}')
        self.size_multiple = int(val_opt.get('size_multiple', size_multiple_of(bare.base if self.is_clsr else bare)))
        if hasattr(bare, 'scale'):
            self.scale = int(bare.scale)
        elif 'scale' in opt:
            self.scale = int(opt['scale'])
        else:
            raise ValueError(f'option `scale` is required for the plain network {opt["network_g"]["type"]}')

    # ------------------------------------------------------------------ training
    def init_training_settings(self):
        train_opt = self.opt['train']
        self.is_clsr = is_clsr_net(self.get_bare_model(self.net_g))  # SRModel.__init__ calls this first
        if not self.is_clsr and (train_opt.get('context_opt') or train_opt.get('fix_base')):
            raise ValueError(f'network_g {self.opt["network_g"]["type"]} is a plain backbone: it trains with '
                             'pixel_opt on the whole context; train.context_opt / train.fix_base are for CLSR networks')
        logger = get_root_logger()
        # train.fix_base: the plain backbone (pretrained weights) is frozen -- in model_to_device,
        # before DDP records which parameters need gradients -- so that only the context modules
        # (GCM, PIM) learn: every gain over pre-crop then comes from the context.
        self.fix_base = bool(train_opt.get('fix_base', False))
        super().init_training_settings()
        if train_opt.get('context_opt'):
            self.cri_context = build_loss(train_opt['context_opt']).to(self.device)
            self.lambda_schedule = LambdaSchedule.from_opt(train_opt.get('lambda_schedule'), train_opt['total_iter'])
        else:
            if (train_opt.get('lambda_schedule') or {}).get('start', 0) > 0:
                raise ValueError('train.lambda_schedule has start > 0 but train.context_opt is missing')
            self.cri_context = None
            self.lambda_schedule = LambdaSchedule('constant', 0.0, 0.0)
        logger.info(f'Context loss: {self.cri_context}, weight {self.lambda_schedule}')
        # Once lambda is 0 the PIM's HR head is outside the graph. DDP without
        # find_unused_parameters would wait for its gradients forever: tie it in with a zero.
        self._tie_unused = self.opt['dist'] and not self.opt.get('find_unused_parameters', False)

    def model_to_device(self, net):
        """BasicSR's (DDP wrap when distributed), with ``train.fix_base`` applied first."""
        if self.opt['is_train'] and (self.opt.get('train') or {}).get('fix_base') and is_clsr_net(net):
            for p in net.base.parameters():
                p.requires_grad_(False)
        return super().model_to_device(net)

    def setup_optimizers(self):
        """SRModel's, but one log line for a frozen base (``train.fix_base``) instead of one
        warning per parameter."""
        train_opt = self.opt['train']
        optim_params = [v for v in self.net_g.parameters() if v.requires_grad]
        frozen = sum(v.numel() for v in self.net_g.parameters() if not v.requires_grad)
        if frozen:
            get_root_logger().info(f'train.fix_base: {frozen:,} base parameters frozen, '
                                   f'{sum(v.numel() for v in optim_params):,} trained')
        optim_type = train_opt['optim_g'].pop('type')
        self.optimizer_g = self.get_optimizer(optim_type, optim_params, **train_opt['optim_g'])
        self.optimizers.append(self.optimizer_g)

    def _degrade(self, data):
        """Degradation mode: the LR context made from the HR context on this device."""
        if getattr(self, '_degrader', None) is None:
            train_set = (self.opt.get('datasets') or {}).get('train') or {}
            self._degrader = Degrader(train_set.get('degradation'), self.scale)
        gt_context = data['gt_context'].to(self.device)
        lq, _ = self._degrader(gt_context, data)
        return dict(data, lq=lq, gt_context=gt_context)

    def feed_data(self, data):
        if 'lq' not in data and 'gt_context' in data:  # degradation mode: HR contexts only
            data = self._degrade(data)
        self.lq = data['lq'].to(self.device)
        where = data.get('lq_path', ['<batch>'])[0]
        if self.lq.dim() != 4:
            raise ValueError(f'{where}: lq must be [B, 3, H, W], got {tuple(self.lq.shape)}')
        if 'roi' in data:  # training: one ROI per context crop
            roi = torch.as_tensor(data['roi']).long()
            if roi.shape != (self.lq.size(0), 4):
                raise ValueError(f'{where}: roi must be [B, 4] (x, y, w, h), got {tuple(roi.shape)}')
            batch_idx = torch.arange(roi.size(0), dtype=torch.long).unsqueeze(1)
            boxes = torch.cat([batch_idx, roi], 1)
            try:
                roi_ops.validate_boxes(boxes, self.lq.shape)
            except ValueError as err:
                raise ValueError(f'{where}: {err}') from None
            self.boxes = boxes.to(self.device)
            self.rois = None
            self.gt_context = data['gt_context'].to(self.device) if 'gt_context' in data else None
        elif 'rois' in data:  # validation/test: the whole image and its ROI grid
            if self.lq.size(0) != 1:
                raise ValueError(f'{where}: validation batches hold one image, got {self.lq.size(0)}')
            rois = torch.as_tensor(data['rois']).long()
            if rois.dim() != 3 or rois.shape[0] != 1 or rois.shape[2] != 4:
                raise ValueError(f'{where}: rois must be [1, R, 4] (x, y, w, h), got {tuple(rois.shape)}')
            self.rois = rois[0]
            check_boxes(self.rois, self.lq.shape, where)
            self.boxes = None
            self.gt_context = None
        else:
            raise ValueError(f'{where}: a CLSR batch needs `roi` (train) or `rois` (val), got keys {sorted(data)}')
        if 'gt' in data:
            self.gt = data['gt'].to(self.device)

    def optimize_parameters(self, current_iter):
        lam = self.lambda_schedule(current_iter)
        self.optimizer_g.zero_grad()
        ctx_sr = None
        if not self.is_clsr:  # plain backbone: the whole LR context against the HR context
            if self.gt_context is None:
                raise ValueError('training a plain backbone needs `gt_context` (HR context) in the batch')
            self.output = self.net_g(self.lq)
            self.gt = self.gt_context
        elif lam > 0:
            self.output, ctx_sr = self.net_g(self.lq, self.boxes, return_context=True)
            if ctx_sr is None:
                raise ValueError('lambda > 0 but the network returns no PIM context (is network_g.pim None?)')
        else:  # lambda == 0: skip the PIM's HR context prediction entirely
            self.output = self.net_g(self.lq, self.boxes)

        l_total = 0
        loss_dict = OrderedDict()
        if self.cri_pix:
            l_pix = self.cri_pix(self.output, self.gt)
            l_total += l_pix
            loss_dict['l_pix'] = l_pix
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            if l_percep is not None:
                l_total += l_percep
                loss_dict['l_percep'] = l_percep
            if l_style is not None:
                l_total += l_style
                loss_dict['l_style'] = l_style
        if ctx_sr is not None:
            if self.gt_context is None:
                raise ValueError('lambda > 0 needs `gt_context` (HR context) in the training batch')
            l_context = self.cri_context(ctx_sr, self.gt_context)
            l_total += lam * l_context
            loss_dict['l_context'] = l_context
        elif self._tie_unused:
            l_total += 0. * sum(p.sum() for p in self.net_g.parameters() if p.requires_grad)

        l_total.backward()
        self.optimizer_g.step()

        self.log_dict = self.reduce_loss_dict(loss_dict)
        self.log_dict['lambda'] = lam  # same on every rank; tensorboard scalar `lambda`

        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # ------------------------------------------------------------------ evaluation
    def _eval_net(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        return self.get_bare_model(net)  # encode_context/decode are not on the DDP wrapper

    def test(self):
        """SR every ROI of ``self.rois`` (mode ``val.mode``) -> ``self.roi_outputs`` (one
        [3, s*h, s*w] tensor per ROI) and ``self.output``, the ROIs stitched into the image."""
        net = self._eval_net()
        was_training = net.training
        net.eval()
        with torch.no_grad():
            if self.val_mode == 'clsr':
                outs = self._test_clsr(net)
            else:
                backbone = net.base if self.is_clsr else net
                if self.val_mode == 'bicubic':
                    outs = self._test_bicubic()
                elif self.val_mode == 'pre_crop':
                    outs = self._test_pre_crop(backbone)
                else:
                    outs = self._test_post_crop(backbone)
        if was_training:
            net.train()
        self.roi_outputs = outs
        s = self.scale
        canvas = self.lq.new_zeros(1, 3, s * self.lq.shape[-2], s * self.lq.shape[-1])
        for (x, y, w, h), out in zip(self.rois.tolist(), outs):
            canvas[0, :, s * y:s * (y + h), s * x:s * (x + w)] = out
        self.output = canvas

    def _groups(self, keys):
        """Indices of the ROIs grouped by a key (same-size boxes are batched together)."""
        groups = OrderedDict()
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        for key, idx in groups.items():
            for k in range(0, len(idx), self.roi_chunk):
                yield key, idx[k:k + self.roi_chunk]

    def _test_clsr(self, net):
        outs = [None] * len(self.rois)
        state = net.encode_context(self.lq)  # one context pass shared by all ROIs (Sec. 3.4)
        for _, idx in self._groups([tuple(r[2:]) for r in self.rois.tolist()]):
            rois = self.rois[idx]
            boxes = torch.cat([torch.zeros(len(idx), 1, dtype=torch.long), rois], 1).to(self.device)
            sr = net.decode(state, boxes)
            for j, i in enumerate(idx):
                outs[i] = sr[j]
        return outs

    def _test_pre_crop(self, backbone):
        """Backbone on each ROI grown by ``val.pre_crop_pad`` LR pixels (plus right/bottom up to
        the backbone's size multiple), cropped back. The padding is real context, shifted inward
        at the image border and cut to the image where it is larger (roi.place_inside) --
        exactly what CLSR's base branch sees (``roi.pad_boxes`` + ``roi.place_inside`` +
        ``roi.crop``), so CLSR at initialisation matches this baseline."""
        s = self.scale
        outs = [None] * len(self.rois)
        for (w, h), idx in self._groups([tuple(r[2:]) for r in self.rois.tolist()]):
            pads = roi_ops.padding_for(h, w, self.pre_crop_pad, self.size_multiple)
            boxes = torch.cat([torch.zeros(len(idx), 1, dtype=torch.long), self.rois[idx]], 1)
            pboxes, offsets = roi_ops.place_inside(roi_ops.pad_boxes(boxes, pads), boxes, self.lq.shape[-2:],
                                                    self.size_multiple)
            sr = roi_ops.crop_outputs(run_backbone(backbone, roi_ops.crop(self.lq, pboxes), s), offsets, h, w, s)
            for j, i in enumerate(idx):
                outs[i] = sr[j]
        return outs

    def _test_bicubic(self):
        """Reference row: MATLAB-compatible bicubic x``scale`` of each ROI alone (no network)."""
        s = self.scale
        lq = self.lq[0].detach().cpu()
        outs = []
        for x, y, w, h in self.rois.tolist():
            up = imresize(lq[:, y:y + h, x:x + w], s)
            outs.append(up[:, :s * h, :s * w].clamp_(0, 1).to(self.device))
        return outs

    def _test_post_crop(self, backbone):
        s = self.scale
        full = run_backbone(backbone, self.lq, s, self.size_multiple)[0]
        return [full[:, s * y:s * (y + h), s * x:s * (x + w)] for x, y, w, h in self.rois.tolist()]

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """BasicSR's validation loop with per-ROI metrics averaged over all ROIs of the dataset."""
        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt['val']
        metrics_opt = val_opt.get('metrics') or {}
        with_metrics = bool(metrics_opt)
        save_roi = val_opt.get('save_roi', False)
        logger = get_root_logger()
        for name, m_opt in metrics_opt.items():
            if m_opt.get('crop_border', 0) != 0:
                logger.warning(f'val.metrics.{name}.crop_border={m_opt["crop_border"]}: the paper '
                               'scores whole ROIs (crop_border: 0)')
        if with_metrics:
            self._initialize_best_metric_results(dataset_name)
        averager = MetricAverager(metrics_opt.keys())
        # val.image_metrics: also score each stitched ROI grid as one image (mean over images) --
        # a secondary number for comparing with whole-image protocols, never the tracked metric
        image_averager = MetricAverager(metrics_opt.keys()) if val_opt.get('image_metrics', False) else None
        per_roi_rows = []
        num_images = 0
        pbar = tqdm(total=len(dataloader), unit='image') if val_opt.get('pbar', False) else None

        for val_data in dataloader:
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            self.test()
            num_images += 1
            s = self.scale
            gt_img = tensor2img([self.gt.detach().cpu()]) if hasattr(self, 'gt') else None
            vis_dir = osp.join(self.opt['path']['visualization'], img_name if self.opt['is_train'] else dataset_name)
            suffix = current_iter if self.opt['is_train'] else (val_opt.get('suffix') or self.opt['name'])
            for i, ((x, y, w, h), out) in enumerate(zip(self.rois.tolist(), self.roi_outputs)):
                sr_img = tensor2img([out.detach().cpu()])
                if save_roi:
                    imwrite(sr_img, osp.join(vis_dir, f'{img_name}_rois', f'{img_name}_roi{i:04d}_{suffix}.png'))
                if with_metrics and gt_img is not None:
                    metric_data = {'img': sr_img, 'img2': gt_img[s * y:s * (y + h), s * x:s * (x + w)]}
                    values = {name: calculate_metric(metric_data, m_opt) for name, m_opt in metrics_opt.items()}
                    averager.add(values)
                    per_roi_rows.append(dict(image=img_name, roi=i, x=x, y=y, w=w, h=h, **values))
            if save_img or (image_averager is not None and gt_img is not None):
                sr_full = tensor2img([self.output.detach().cpu()])
                if save_img:
                    imwrite(sr_full, osp.join(vis_dir, f'{img_name}_{suffix}.png'))
                if image_averager is not None and gt_img is not None:
                    image_averager.add({name: calculate_metric({'img': sr_full, 'img2': gt_img}, m_opt)
                                        for name, m_opt in metrics_opt.items()})
            for name in ('lq', 'gt', 'output', 'roi_outputs'):
                if hasattr(self, name):
                    delattr(self, name)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if pbar:
                pbar.update(1)
                pbar.set_description(f'Test {img_name}')
        if pbar:
            pbar.close()

        if with_metrics:
            self.metric_results = averager.means()
            self.num_rois = averager.num_rois
            for metric, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, metric, value, current_iter)
            logger.info(f'{dataset_name}: mode {self.val_mode}, {averager.num_rois} ROIs in {num_images} images '
                        '(metrics are means over all ROIs)')
            for metric, n in averager.num_inf.items():
                if n:
                    logger.warning(f'{dataset_name}: {n} ROIs restored exactly (infinite {metric}) are left '
                                   'out of its mean')
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
            self.image_metric_results = image_averager.means() if image_averager else None
            if image_averager:
                logger.info(f'{dataset_name}: stitched-image metrics (mean over {num_images} images, secondary): '
                            + ', '.join(f'{k}: {v:.4f}' for k, v in self.image_metric_results.items()))
            if not self.opt['is_train']:
                self._write_metrics(dataset_name, averager, num_images, per_roi_rows)

    def _write_metrics(self, dataset_name, averager, num_images, per_roi_rows):
        """Test runs: ``results/<name>/metrics_<dataset>.json`` (means) and ``rois_<dataset>.csv``."""
        root = self.opt['path']['results_root']
        os.makedirs(root, exist_ok=True)
        summary = dict(dataset=dataset_name, mode=self.val_mode, num_images=num_images,
                       num_rois=averager.num_rois, metrics=averager.means(), num_inf=averager.num_inf,
                       pre_crop_pad=self.pre_crop_pad if self.val_mode == 'pre_crop' else None,
                       image_metrics=self.image_metric_results)
        with open(osp.join(root, f'metrics_{dataset_name}.json'), 'w') as f:
            json.dump(summary, f, indent=2)
        with open(osp.join(root, f'rois_{dataset_name}.csv'), 'w', newline='') as f:
            fields = ['image', 'roi', 'x', 'y', 'w', 'h'] + averager.names
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(per_roi_rows)

    def get_current_visuals(self):
        out_dict = OrderedDict()
        out_dict['lq'] = self.lq.detach().cpu()
        out_dict['result'] = self.output.detach().cpu()
        if hasattr(self, 'gt'):
            out_dict['gt'] = self.gt.detach().cpu()
        return out_dict
