//! The official recipes' hyper-parameters per family (SPEC.md §3–4), for `--preset`.
//! Values are for ImageNet at an effective batch of 4096; the learning rate scales
//! linearly when the effective batch differs (as DeiT's `lr × batch / 512`).

use crate::engine::TrainConfig;
use crate::optim::OptimizerKind;
use crate::schedule::Family;

#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub optimizer: OptimizerKind,
    /// Peak lr at `effective_batch`.
    pub lr: f64,
    pub effective_batch: usize,
    pub min_lr: f64,
    pub weight_decay: f64,
    /// Warm-up: 20 epochs of the first stage (in its rescaled epochs), or a share of the budget.
    pub warmup: Warmup,
    pub drop_path: f64,
    pub clip_grad: Option<f64>,
    pub ema_decay: Option<f64>,
    pub label_smoothing: f64,
    pub mixup: f64,
    pub cutmix: f64,
    pub reprob: f64,
    pub crop_min_scale: f64,
    pub source: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Warmup {
    FirstStageEpochs(f64),
    BudgetShare(f64),
}

pub const NAMES: &[&str] = &["convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny", "convnext_small", "convnext_base", "deit_tiny", "deit_small", "deit_base", "resnet18", "resnet34", "resnet50"];

/// The preset for a model name (`convnext_tiny`, `deit_small_patch16_224`, …) or a preset name.
pub fn preset(name: &str) -> Option<Preset> {
    let family = Family::of_model(name);
    let common = |name, drop_path, source| Preset {
        name,
        optimizer: OptimizerKind::AdamW,
        lr: 4e-3,
        effective_batch: 4096,
        min_lr: 1e-6,
        weight_decay: 0.05,
        warmup: Warmup::FirstStageEpochs(20.0),
        drop_path,
        clip_grad: None,
        ema_decay: None,
        label_smoothing: 0.1,
        mixup: 0.8,
        cutmix: 1.0,
        reprob: 0.25,
        crop_min_scale: 0.08,
        source,
    };
    let key = name.trim_end_matches("_patch16_224");
    match family {
        Family::ConvNeXt => {
            // ConvNeXt's official drop path (T 0.1, S 0.4, B 0.5; the small variants 0.0–0.1);
            // EMA 0.9999 as in the ConvNeXt / ET++ ConvNeXt scripts.
            let dp = match key {
                "convnext_tiny" => 0.1,
                "convnext_small" => 0.4,
                "convnext_base" => 0.5,
                "convnext_atto" | "convnext_femto" => 0.0,
                "convnext_pico" | "convnext_nano" => 0.1,
                _ => return None,
            };
            Some(Preset { ema_decay: Some(0.9999), ..common("convnext", dp, "ConvNeXt (Liu et al. 2022) / ET++ ConvNeXt scripts") })
        }
        Family::DeiT => {
            let ok = matches!(key, "deit_tiny" | "deit_small" | "deit_base");
            ok.then(|| Preset {
                warmup: Warmup::BudgetShare(0.2),
                clip_grad: Some(5.0),
                ..common("deit", 0.1, "DeiT (Touvron et al. 2021) with ET++'s 4096 batch, 20 % warm-up, clip 5.0")
            })
        }
        Family::Other => matches!(key, "resnet18" | "resnet34" | "resnet50").then(|| common("resnet", if key == "resnet50" { 0.05 } else { 0.0 }, "ET++ AdamW recipe (as for the other families)")),
    }
}

impl Preset {
    /// Applies the preset to `cfg`, leaving alone the settings for which `given(field)` says the
    /// user chose a value. `first_stage_fraction` is the first stage's resolution / base.
    pub fn apply(&self, cfg: &mut TrainConfig, given: &dyn Fn(&str) -> bool, first_stage_fraction: f64) {
        if !given("effective_batch") {
            cfg.effective_batch = Some(self.effective_batch);
        }
        let eff = cfg.effective_batch.unwrap_or(cfg.batch_size) as f64;
        let mut set = |field: &str, f: &mut dyn FnMut(&mut TrainConfig)| {
            if !given(field) {
                f(cfg)
            }
        };
        set("optimizer", &mut |c| c.optimizer = self.optimizer);
        set("lr", &mut |c| c.lr = self.lr * eff / self.effective_batch as f64);
        set("min_lr", &mut |c| c.min_lr = self.min_lr);
        set("weight_decay", &mut |c| c.weight_decay = self.weight_decay);
        set("warmup_epochs", &mut |c| {
            c.warmup_epochs = match self.warmup {
                Warmup::FirstStageEpochs(e) => e * first_stage_fraction * first_stage_fraction,
                Warmup::BudgetShare(s) => s * c.epochs,
            }
        });
        set("drop_path", &mut |c| c.drop_path = self.drop_path);
        set("drop_path_ref_epochs", &mut |c| c.drop_path_ref_epochs = Some(200.0));
        set("clip_grad", &mut |c| c.clip_grad = self.clip_grad);
        set("ema_decay", &mut |c| c.ema_decay = self.ema_decay);
        set("label_smoothing", &mut |c| c.label_smoothing = self.label_smoothing);
        set("mixup", &mut |c| c.mixup = self.mixup);
        set("cutmix", &mut |c| c.cutmix = self.cutmix);
        set("reprob", &mut |c| c.erasing = self.reprob);
        set("crop_min_scale", &mut |c| c.crop_min_scale = self.crop_min_scale);
        cfg.preset = Some(self.name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_follow_the_spec_and_respect_given_flags() {
        for n in NAMES {
            assert!(preset(n).is_some(), "{n}");
        }
        assert!(preset("swin_tiny").is_none());
        let p = preset("deit_small_patch16_224").unwrap();
        assert_eq!(p.clip_grad, Some(5.0));
        let mut cfg = TrainConfig { epochs: 100.0, batch_size: 64, ..Default::default() };
        p.apply(&mut cfg, &|f| f == "mixup", 96.0 / 224.0);
        assert_eq!(cfg.effective_batch, Some(4096));
        assert_eq!(cfg.lr, 4e-3);
        assert!((cfg.warmup_epochs - 20.0).abs() < 1e-12, "DeiT: 20 % of the budget");
        assert_eq!(cfg.mixup, 0.0, "a given flag wins");
        assert_eq!(cfg.cutmix, 1.0);
        let mut cfg = TrainConfig { epochs: 200.0, batch_size: 64, ..Default::default() };
        preset("convnext_tiny").unwrap().apply(&mut cfg, &|f| f == "effective_batch", 160.0 / 224.0);
        assert_eq!(cfg.effective_batch, None);
        assert!((cfg.lr - 4e-3 * 64.0 / 4096.0).abs() < 1e-15, "lr scales with the effective batch");
        assert!((cfg.warmup_epochs - 20.0 * (160.0f64 / 224.0).powi(2)).abs() < 1e-12);
        assert_eq!(cfg.ema_decay, Some(0.9999));
        assert_eq!(cfg.drop_path_ref_epochs, Some(200.0));
    }
}
