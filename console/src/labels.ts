/** Names of what the models write, in the console's language: score fields, model tags and their
 * values, model features (including trait, attribute and category-share columns), models. The API
 * sends keys (and English descriptions); these turn them into the reader's words, falling back to
 * the key only for a name the console does not know (a custom trait, a new model). */
import type { I18n } from "./i18n";

const PROPENSITY = "propensity_";
const LOOKALIKE = "lookalike_";
const VERSION = "_model_version";

/** A model's name: churn, rfm, propensity_care, lookalike_vip ... */
export function modelLabel(i18n: I18n, model: string): string {
  if (model.startsWith(PROPENSITY)) return i18n.t("scoreNames.propensityOf", { target: model.slice(PROPENSITY.length) });
  if (model.startsWith(LOOKALIKE)) return i18n.t("scoreNames.lookalikeOf", { name: model.slice(LOOKALIKE.length) });
  return i18n.tOr(`models.${model}`, i18n.tOr(`scoreNames.${model}`, model));
}

/** A score field of ``profile.scores``. */
export function scoreLabel(i18n: I18n, key: string): string {
  const known = i18n.tOr(`scoreNames.${key}`, "");
  if (known) return known;
  if (key.endsWith(VERSION)) return i18n.t("scoreNames.modelVersionOf", { model: modelLabel(i18n, key.slice(0, -VERSION.length)) });
  if (key.startsWith(PROPENSITY) || key.startsWith(LOOKALIKE)) return modelLabel(i18n, key);
  return key;
}

/** A model tag's name (``pain_<topic>`` included). */
export function tagLabel(i18n: I18n, tag: string): string {
  if (tag.startsWith("pain_") && tag !== "pain_points") {
    const topic = tag.slice(5);
    return i18n.t("tagNames.pain", { topic: i18n.tOr(`topics.${topic}`, topic) });
  }
  return i18n.tOr(`tagNames.${tag}`, tag);
}

/** A tag's value, read by what the tag is (an RFM group, a lifecycle stage, a topic ...). */
export function tagValueLabel(i18n: I18n, tag: string, value: unknown, show: (v: unknown) => string): string {
  const v = String(value);
  switch (tag) {
    case "rfm_group": return i18n.tOr(`rfm.group.${v}`, v);
    case "rfm_value_tier": return i18n.tOr(`rfm.tier.${v}`, v);
    case "lifecycle_stage": return i18n.tOr(`lifecycleStages.${v}`, v);
    case "feedback_sentiment": return i18n.tOr(`sentiment.${v}`, v);
    case "pain_points": return i18n.tOr(`topics.${v}`, v);
    default: return show(value);
  }
}

/** A feature of the churn / propensity / lookalike models, in words. */
export function featureLabel(i18n: I18n, feature: string, description?: string): string {
  if (feature.startsWith("traits.")) return i18n.t("insight.featureOf.trait", { name: feature.slice(7) });
  if (feature.startsWith("attributes.")) {
    const k = feature.slice(11);
    return i18n.t("insight.featureOf.attribute", { name: i18n.tOr(`attrs.${k}`, k) });
  }
  if (feature.startsWith("cat_share:")) return i18n.t("insight.featureOf.categoryShare", { name: feature.slice(10) });
  // the description the API sends is English: only where the console has no name for it
  return i18n.tOr(`insight.features.${feature}`, description || feature);
}
