//! `--preset MODEL`: the official ImageNet recipe of a variant (its family's `recipe`) as a
//! settings layer between the defaults and the command line. Recipes are given for an
//! effective batch of 4096; the learning rate scales linearly with the effective batch used
//! (as DeiT's `lr × batch / 512`), and the warm-up follows the recipe's rule.

use crate::config::{TrainConfig, TrainLayer};
use crate::optim::OptimizerKind;
use crate::schedule::Schedule;
use et_models::family::{Recipe, RecipeOptimizer, Warmup};
use et_models::registry::{family, model_names};

#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    /// The registered model the recipe is for.
    pub model: &'static str,
    pub recipe: Recipe,
}

/// Registered models that have a recipe.
pub fn names() -> Vec<&'static str> {
    model_names().into_iter().filter(|m| family(m).is_ok_and(|f| f.recipe(m).is_some())).collect()
}

/// The preset for a registered model name, or a unique prefix of one ending before an
/// underscore (`deit_small` for `deit_small_patch16_224`).
pub fn preset(name: &str) -> Result<Preset, String> {
    let all = names();
    let matches: Vec<&'static str> = all.iter().copied().filter(|m| *m == name || m.starts_with(&format!("{name}_"))).collect();
    let model = match matches.as_slice() {
        [m] => *m,
        _ => match all.iter().find(|m| **m == name) {
            Some(m) => *m,
            None => return Err(format!("no preset for '{name}': presets exist for {}", all.join(", "))),
        },
    };
    let recipe = family(model).ok().and_then(|f| f.recipe(model)).ok_or_else(|| format!("no preset for '{name}'"))?;
    Ok(Preset { model, recipe })
}

impl Preset {
    /// The settings the recipe fixes, whatever the rest of the run.
    fn fixed(&self) -> TrainLayer {
        let r = &self.recipe;
        let mut l = TrainLayer::default();
        l.model.model = Some(self.model.to_string());
        l.model.drop_path = Some(r.drop_path);
        // ET++ scales the 300-epoch drop-path rate by budget / 200.
        l.model.drop_path_ref_epochs = Some(200.0);
        l.optim.optimizer = Some(match r.optimizer {
            RecipeOptimizer::AdamW => OptimizerKind::AdamW,
            RecipeOptimizer::Lamb => OptimizerKind::Lamb,
        });
        l.optim.effective_batch = Some(r.effective_batch);
        l.optim.min_lr = Some(r.min_lr);
        l.optim.weight_decay = Some(r.weight_decay);
        l.optim.clip_grad = r.clip_grad;
        l.optim.ema_decay = r.ema_decay;
        l.optim.label_smoothing = Some(r.label_smoothing);
        l.data.mixup = Some(r.mixup);
        l.data.cutmix = Some(r.cutmix);
        l.data.erasing = Some(r.reprob);
        l.data.crop_min_scale = Some(r.crop_min_scale);
        l
    }

    /// The preset's layer for a run whose command line is `cli`: the learning rate scaled to
    /// the effective batch the run will use, the warm-up by the recipe's rule for the run's
    /// budget and first-stage resolution.
    pub fn layer(&self, cli: &TrainLayer) -> TrainLayer {
        let mut l = self.fixed();
        let probe = TrainConfig::resolve(&[&l, cli]);
        let r = &self.recipe;
        l.optim.lr = Some(r.lr * probe.effective_batch() as f64 / r.effective_batch as f64);
        l.optim.warmup_epochs = Some(match r.warmup {
            Warmup::FirstStageEpochs(e) => {
                // The scripts count warm-up epochs at the first stage's resolution; in
                // base-equivalent epochs that is e · (r0 / base)².
                let f = first_stage_fraction(&probe);
                e * f * f
            }
            Warmup::BudgetShare(s) => s * probe.schedule.epochs,
        });
        l
    }
}

/// The first stage's resolution over the base, for the run's schedule (1 where the schedule
/// cannot be resolved here; the run itself reports why).
fn first_stage_fraction(cfg: &TrainConfig) -> f64 {
    let Ok(fam) = family(&cfg.model.model) else { return 1.0 };
    Schedule::resolve(&cfg.schedule.schedule, fam.etpp_resolutions(), 224, cfg.schedule.epochs).map_or(1.0, |s| s.stages[0].resolution as f64 / 224.0)
}

/// Resolves a run's settings: defaults < preset < command line.
pub fn resolve(cli: &TrainLayer, preset: Option<&Preset>) -> TrainConfig {
    match preset {
        None => TrainConfig::resolve(&[cli]),
        Some(p) => {
            let mut c = TrainConfig::resolve(&[&p.layer(cli), cli]);
            c.preset = Some(p.model.to_string());
            c
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_follow_the_recipes_and_the_command_line_wins() {
        for n in ["convnext_tiny", "deit_small", "resnet50", "swin_tiny", "CSWin_64_12211_tiny_224"] {
            assert!(preset(n).is_ok(), "{n}");
        }
        assert!(preset("pvt_v2_b0").unwrap_err().contains("no preset"));
        assert!(preset("convnext").is_err(), "an ambiguous prefix is refused");

        let deit = preset("deit_small").unwrap();
        let mut cli = TrainLayer::default();
        cli.schedule.epochs = Some(100.0);
        cli.data.mixup = Some(0.0);
        let c = resolve(&cli, Some(&deit));
        assert_eq!(c.model.model, "deit_small_patch16_224", "the preset names the model");
        assert_eq!(c.optim.effective_batch, Some(4096));
        assert_eq!(c.optim.lr, 4e-3);
        assert!((c.optim.warmup_epochs - 20.0).abs() < 1e-12, "DeiT: 20 % of the budget");
        assert_eq!(c.optim.clip_grad, Some(5.0));
        assert_eq!(c.data.mixup, 0.0, "a given flag wins");
        assert_eq!(c.data.cutmix, 1.0);
        assert_eq!(c.preset.as_deref(), Some("deit_small_patch16_224"));

        let mut cli = TrainLayer::default();
        cli.schedule.epochs = Some(200.0);
        cli.optim.effective_batch = Some(64);
        let c = resolve(&cli, Some(&preset("convnext_tiny").unwrap()));
        assert_eq!(c.optim.effective_batch, Some(64));
        assert!((c.optim.lr - 4e-3 * 64.0 / 4096.0).abs() < 1e-15, "lr scales with the effective batch");
        assert!((c.optim.warmup_epochs - 20.0 * (160.0f64 / 224.0).powi(2)).abs() < 1e-12);
        assert_eq!(c.optim.ema_decay, Some(0.9999));
        assert_eq!(c.model.drop_path_ref_epochs, Some(200.0));
        assert_eq!(preset("resnet50").unwrap().recipe.drop_path, 0.0, "ET++'s ResNet-50 script: no drop path");
    }
}
