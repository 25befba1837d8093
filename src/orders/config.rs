//! `[orders]`: the taxonomy, deadlines per priority, limits.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriorityConfig {
    /// Time to a result.
    pub deadline_secs: u64,
    /// After the deadline: supervision; after this much more: escalation to the tier above.
    pub escalate_after_secs: u64,
    /// May be dispatched past intermediate tiers.
    pub skip_tiers: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrioritiesConfig {
    pub routine: PriorityConfig,
    pub urgent: PriorityConfig,
    pub emergency: PriorityConfig,
}

impl Default for PrioritiesConfig {
    fn default() -> Self {
        PrioritiesConfig {
            routine: PriorityConfig {
                deadline_secs: 72 * 3600,
                escalate_after_secs: 24 * 3600,
                skip_tiers: false,
            },
            urgent: PriorityConfig {
                deadline_secs: 24 * 3600,
                escalate_after_secs: 4 * 3600,
                skip_tiers: true,
            },
            emergency: PriorityConfig {
                deadline_secs: 2 * 3600,
                escalate_after_secs: 3600,
                skip_tiers: true,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CategoryConfig {
    pub id: String,
    pub name: String,
    pub name_en: String,
    /// A shorter deadline than the priority's, for this kind of request.
    #[serde(default)]
    pub deadline_secs: Option<u64>,
    /// Why such requests happen, as the analysis groups them (named at intake or with the
    /// result).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<CauseConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CauseConfig {
    pub id: String,
    pub name: String,
    pub name_en: String,
}

type Causes = &'static [(&'static str, &'static str, &'static str)];

const NOISE: Causes = &[
    ("square_dance", "广场舞", "Square dancing"),
    ("construction", "施工", "Construction"),
    ("commercial", "商铺经营", "Shops and venues"),
    ("neighbour", "邻里生活", "Neighbours"),
];
const WATERLOGGING: Causes = &[
    ("levee_collapse", "堤坝溃口", "Levee collapse"),
    ("urban_waterlogging", "城市内涝", "Urban waterlogging"),
    ("blocked_drain", "排水管网堵塞", "Blocked drain"),
    ("manhole_backflow", "井口反水", "Manhole backflow"),
];
const SANITATION: Causes = &[
    ("garbage_overflow", "垃圾满溢", "Overflowing bins"),
    ("dumping", "乱堆乱放", "Dumping"),
    ("public_toilet", "公厕", "Public toilets"),
];
const ROADS: Causes = &[
    ("pavement", "路面破损", "Broken pavement"),
    ("street_light", "路灯", "Street lights"),
    ("manhole_cover", "井盖", "Manhole covers"),
];
const HEATING: Causes = &[
    ("low_temperature", "室温不达标", "Rooms too cold"),
    ("pipe_leak", "管网泄漏", "Leaking pipes"),
    ("no_supply", "停供", "No supply"),
];

fn default_categories() -> Vec<CategoryConfig> {
    let none: Causes = &[];
    [
        ("noise", "噪音扰民", "Noise", None, NOISE),
        (
            "waterlogging",
            "积水内涝",
            "Waterlogging",
            Some(12 * 3600),
            WATERLOGGING,
        ),
        ("sanitation", "环境卫生", "Sanitation", None, SANITATION),
        ("roads", "道路设施", "Roads and facilities", None, ROADS),
        ("public_order", "社会治安", "Public order", None, none),
        (
            "government_service",
            "政务服务",
            "Government service",
            None,
            none,
        ),
        ("heating", "供暖供热", "Heating", Some(24 * 3600), HEATING),
        ("utilities", "水电燃气", "Water, power and gas", None, none),
        ("property", "物业管理", "Property management", None, none),
        (
            "epidemic",
            "疫情防控",
            "Epidemic control",
            Some(12 * 3600),
            none,
        ),
        ("dispute", "矛盾纠纷", "Disputes and mediation", None, none),
        ("other", "其他", "Other", None, none),
    ]
    .into_iter()
    .map(
        |(id, name, name_en, deadline_secs, causes)| CategoryConfig {
            id: id.into(),
            name: name.into(),
            name_en: name_en.into(),
            deadline_secs,
            causes: causes
                .iter()
                .map(|(id, name, name_en)| CauseConfig {
                    id: (*id).into(),
                    name: (*name).into(),
                    name_en: (*name_en).into(),
                })
                .collect(),
        },
    )
    .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    pub priorities: PrioritiesConfig,
    pub categories: Vec<CategoryConfig>,
    pub max_description_chars: usize,
    pub max_text_chars: usize,
    pub max_note_chars: usize,
    /// How long an idempotency key is remembered.
    pub idempotency_secs: u64,
    /// Order changes reach a watching console at most once per window.
    pub feed_coalesce_ms: u64,
    /// Largest photo attached to an order (the field page sends ~0.3 MB after scaling down).
    pub max_attachment_bytes: usize,
    /// Photos per order.
    pub max_attachments: usize,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        OrdersConfig {
            priorities: PrioritiesConfig::default(),
            categories: default_categories(),
            max_description_chars: 2000,
            max_text_chars: 2000,
            max_note_chars: 500,
            idempotency_secs: 48 * 3600,
            feed_coalesce_ms: 100,
            max_attachment_bytes: 4 * 1024 * 1024,
            max_attachments: 8,
        }
    }
}

impl OrdersConfig {
    pub fn policy(&self) -> super::Policy {
        use super::core::{CategoryRule, Limits, PriorityRule};
        let rule = |p: &PriorityConfig| PriorityRule {
            deadline_secs: p.deadline_secs,
            escalate_after_secs: p.escalate_after_secs,
            skip_tiers: p.skip_tiers,
        };
        super::Policy {
            categories: self
                .categories
                .iter()
                .map(|c| {
                    (
                        c.id.clone(),
                        CategoryRule {
                            name: c.name.clone(),
                            name_en: c.name_en.clone(),
                            deadline_secs: c.deadline_secs,
                            causes: c.causes.iter().map(|x| x.id.clone()).collect(),
                        },
                    )
                })
                .collect(),
            priorities: [
                rule(&self.priorities.routine),
                rule(&self.priorities.urgent),
                rule(&self.priorities.emergency),
            ],
            limits: Limits {
                description: self.max_description_chars,
                address: 200,
                text: self.max_text_chars,
                note: self.max_note_chars,
                name: 50,
                phone: 20,
            },
            idempotency_ms: self.idempotency_secs * 1000,
        }
    }
}
