//! Detector configuration: the raw, documented form and its validation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Tuning of one [`Detector`](crate::Detector).
///
/// Every field has a default chosen so that a flood is detected within about five
/// seconds while a news site's ordinary swings (a story going viral doubles or triples
/// traffic) stay in [`Mode::Normal`](crate::Mode::Normal). Factors multiply the learned
/// baseline; durations count [`Detector::tick`](crate::Detector::tick) calls, which the
/// caller makes once per second.
///
/// Unknown keys are rejected when deserialising, so a typo in the TOML is an error
/// instead of a silently ignored setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// Half-life of the request-rate and latency baselines, in seconds (default 300).
    ///
    /// Five minutes follows the daily curve of a news site (morning peak, evening
    /// peak) yet is long enough that the two seconds an attack needs to be noticed
    /// barely move it. The baseline only learns in `Normal` anyway.
    pub baseline_half_life_secs: u32,
    /// Lowest baseline request rate, in requests per second (default 5).
    ///
    /// A quiet site at 1 req/s would otherwise call 4 req/s (one reader opening a page
    /// with its assets) an attack. With the floor, elevated starts at 20 req/s and
    /// under-attack at 50 req/s, both still far below what a small origin can serve.
    pub baseline_floor_rps: f64,
    /// Seconds after start during which the rate baseline is learned but the rate
    /// alone never escalates (default 30). Origin saturation still escalates.
    ///
    /// Without it the first second after a restart would be compared with the floor.
    pub warmup_secs: u32,
    /// Rate / baseline at or above which `Elevated` is entered (default 4).
    pub elevated_enter_factor: f64,
    /// Rate / baseline below which `Elevated` may be left (default 2).
    ///
    /// The gap between enter and exit is the hysteresis that stops flapping when
    /// traffic hovers around the enter threshold.
    pub elevated_exit_factor: f64,
    /// Rate / baseline at or above which `UnderAttack` is entered (default 10).
    ///
    /// The research behind the shield describes floods at 400 times normal traffic;
    /// 10 times is far below that and far above a viral story's first minutes.
    pub attack_enter_factor: f64,
    /// Rate / baseline below which `UnderAttack` may step down to `Elevated` (default 5).
    pub attack_exit_factor: f64,
    /// Consecutive seconds a signal must stay above an enter threshold before the mode
    /// escalates (default 2).
    ///
    /// One second is one noisy sample; two cost one extra second. Escalation is one
    /// level per second, so a flood reaches `UnderAttack` on its third second, well
    /// inside the five-second goal.
    pub enter_after_secs: u32,
    /// Consecutive seconds a signal must stay below the exit threshold before the mode
    /// steps down one level (default 60).
    ///
    /// Floods come in waves with pauses of a few seconds to lure a defender into
    /// relaxing; a minute rides those out, yet the hardest mode never stays on long
    /// after the flood ends.
    pub cooldown_secs: u32,
    /// Origin in-flight / capacity at or above which the origin counts as saturated
    /// (default 0.9). Ignored while the caller reports a capacity of 0.
    pub saturation_enter_ratio: f64,
    /// Origin in-flight / capacity below which a saturated origin counts as recovered
    /// (default 0.7).
    pub saturation_exit_ratio: f64,
    /// Origin p95 latency / its baseline at or above which the origin counts as
    /// saturated (default 5).
    pub latency_enter_factor: f64,
    /// Origin p95 latency / its baseline below which a slow origin counts as recovered
    /// (default 2.5).
    pub latency_exit_factor: f64,
    /// Lowest latency baseline, in milliseconds (default 50).
    ///
    /// An origin that usually answers in 3 ms from its page cache would otherwise be
    /// "saturated" at 15 ms.
    pub latency_floor_ms: f64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            baseline_half_life_secs: 300,
            baseline_floor_rps: 5.0,
            warmup_secs: 30,
            elevated_enter_factor: 4.0,
            elevated_exit_factor: 2.0,
            attack_enter_factor: 10.0,
            attack_exit_factor: 5.0,
            enter_after_secs: 2,
            cooldown_secs: 60,
            saturation_enter_ratio: 0.9,
            saturation_exit_ratio: 0.7,
            latency_enter_factor: 5.0,
            latency_exit_factor: 2.5,
            latency_floor_ms: 50.0,
        }
    }
}

/// One thing wrong with a [`DetectConfig`]: which key, and what would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field's name, as written in the configuration file.
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub hint: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.hint)
    }
}

/// Every problem found in a [`DetectConfig`], reported together so an operator fixes
/// the file in one pass.
///
/// This is the crate's error type: validation is the only thing here that can fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The problems, in field order. Never empty.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid detector configuration:")?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl DetectConfig {
    /// Checks every field and every relation between fields, returning all problems.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem =
            |key: &'static str, hint: String| problems.push(ConfigProblem { key, hint });

        if self.baseline_half_life_secs == 0 {
            problem(
                "baseline_half_life_secs",
                "must be at least 1 second".into(),
            );
        }
        positive(&mut problem, "baseline_floor_rps", self.baseline_floor_rps);
        let factors = [
            ("elevated_enter_factor", self.elevated_enter_factor),
            ("elevated_exit_factor", self.elevated_exit_factor),
            ("attack_enter_factor", self.attack_enter_factor),
            ("attack_exit_factor", self.attack_exit_factor),
            ("latency_enter_factor", self.latency_enter_factor),
            ("latency_exit_factor", self.latency_exit_factor),
        ];
        for (key, value) in factors {
            if !(value.is_finite() && value > 1.0) {
                problem(
                    key,
                    format!("must be a finite number above 1 (the baseline), got {value}"),
                );
            }
        }
        if self.elevated_exit_factor >= self.elevated_enter_factor {
            problem(
                "elevated_exit_factor",
                format!(
                    "must be below elevated_enter_factor ({}), or the mode would flap",
                    self.elevated_enter_factor
                ),
            );
        }
        if self.attack_exit_factor >= self.attack_enter_factor {
            problem(
                "attack_exit_factor",
                format!(
                    "must be below attack_enter_factor ({}), or the mode would flap",
                    self.attack_enter_factor
                ),
            );
        }
        if self.attack_enter_factor <= self.elevated_enter_factor {
            problem(
                "attack_enter_factor",
                format!(
                    "must be above elevated_enter_factor ({})",
                    self.elevated_enter_factor
                ),
            );
        }
        if self.latency_exit_factor >= self.latency_enter_factor {
            problem(
                "latency_exit_factor",
                format!(
                    "must be below latency_enter_factor ({})",
                    self.latency_enter_factor
                ),
            );
        }
        for (key, value) in [
            ("saturation_enter_ratio", self.saturation_enter_ratio),
            ("saturation_exit_ratio", self.saturation_exit_ratio),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 1.0) {
                problem(key, format!("must be a fraction in (0, 1], got {value}"));
            }
        }
        if self.saturation_exit_ratio >= self.saturation_enter_ratio {
            problem(
                "saturation_exit_ratio",
                format!(
                    "must be below saturation_enter_ratio ({})",
                    self.saturation_enter_ratio
                ),
            );
        }
        if self.enter_after_secs == 0 {
            problem("enter_after_secs", "must be at least 1 second".into());
        }
        if self.cooldown_secs == 0 {
            problem("cooldown_secs", "must be at least 1 second".into());
        }
        positive(&mut problem, "latency_floor_ms", self.latency_floor_ms);

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

fn positive(problem: &mut impl FnMut(&'static str, String), key: &'static str, value: f64) {
    if !(value.is_finite() && value > 0.0) {
        problem(key, format!("must be a finite number above 0, got {value}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(DetectConfig::default().validate(), Ok(()));
    }

    #[test]
    fn validate_reports_every_problem() {
        let config = DetectConfig {
            baseline_floor_rps: f64::NAN,
            elevated_exit_factor: 5.0,
            cooldown_secs: 0,
            saturation_enter_ratio: 1.5,
            ..DetectConfig::default()
        };
        let err = config.validate().unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "baseline_floor_rps",
                "elevated_exit_factor",
                "saturation_enter_ratio",
                "cooldown_secs"
            ]
        );
        assert!(
            err.to_string()
                .contains("cooldown_secs: must be at least 1 second")
        );
    }
}
