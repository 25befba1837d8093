//! What the simulated city does, decided without I/O: which request comes in next, how a
//! worker spends its day, how long each step takes. The shells in `terminal` and `driver` only
//! carry these decisions out, so the choices are testable and reproducible from a seed.

use std::time::Duration;

pub use crate::rng::Rng;

/// A citizen's request: what it is about, how it came in, what the caller said.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub source: &'static str,
    pub category: &'static str,
    pub priority: &'static str,
    pub description: &'static str,
    pub result: &'static str,
}

/// Where requests come from; the hotline carries most of them.
const SOURCES: [(&str, u32); 6] = [
    ("hotline_12345", 62),
    ("grid_patrol", 20),
    ("app", 12),
    ("referral_110", 3),
    ("referral_120", 1),
    ("integration", 2),
];

const PRIORITIES: [(&str, u32); 3] = [("routine", 90), ("urgent", 8), ("emergency", 2)];

/// (category, weight, what a resident says, what the grid worker reports).
const TOPICS: [(&str, u32, &str, &str); 16] = [
    (
        "noise",
        12,
        "小区广场舞音响太吵，晚上九点后仍未停止",
        "已与组织者沟通，音量降低并于21点前结束",
    ),
    (
        "noise",
        5,
        "楼下商铺夜间装修噪音扰民",
        "已责令商铺调整施工时间至白天",
    ),
    (
        "sanitation",
        12,
        "垃圾箱满溢多日无人清运",
        "已联系环卫当日清运并增加清运频次",
    ),
    (
        "sanitation",
        6,
        "楼道堆放杂物，存在消防隐患",
        "已组织清理楼道杂物并张贴提示",
    ),
    (
        "roads",
        8,
        "人行道地砖破损，老人出行不便",
        "已报市政维修，设置警示标志",
    ),
    (
        "roads",
        5,
        "路灯不亮，夜间行走不安全",
        "已联系供电维修，路灯恢复照明",
    ),
    (
        "waterlogging",
        6,
        "雨后路口积水严重，车辆无法通行",
        "已疏通雨水篦子，积水排除",
    ),
    (
        "heating",
        9,
        "家中暖气不热，室温不足十六度",
        "已协调供热公司上门排气，室温恢复",
    ),
    (
        "utilities",
        6,
        "小区停水，未见通知",
        "已联系供水公司，管道抢修后恢复供水",
    ),
    (
        "property",
        7,
        "物业长期不维修单元门禁",
        "已督促物业更换门禁设备",
    ),
    (
        "public_order",
        4,
        "小区附近有人聚集喧哗",
        "已联系派出所民警到场劝离",
    ),
    (
        "dispute",
        5,
        "邻里因漏水问题发生纠纷",
        "已组织双方调解，达成维修协议",
    ),
    (
        "government_service",
        6,
        "咨询医保异地备案办理流程",
        "已电话告知办理材料和线上渠道",
    ),
    (
        "epidemic",
        2,
        "外地返回人员咨询健康监测要求",
        "已告知相关要求并登记",
    ),
    (
        "other",
        4,
        "流浪犬在小区出没，居民担心安全",
        "已联系相关部门处置",
    ),
    (
        "other",
        3,
        "废弃车辆长期占用车位",
        "已张贴通知，联系车主挪走车辆",
    ),
];

/// The next citizen request, in the mix above.
pub fn request(rng: &mut Rng) -> Request {
    let source = *rng.weighted(&SOURCES);
    let priority = *rng.weighted(&PRIORITIES);
    let weights: Vec<(usize, u32)> = TOPICS.iter().enumerate().map(|(i, t)| (i, t.1)).collect();
    let t = &TOPICS[*rng.weighted(&weights)];
    Request {
        source,
        category: t.0,
        priority,
        description: t.2,
        result: t.3,
    }
}

/// What a worker reports for a request of `category`: one of that category's results.
pub fn result_for(category: &str, rng: &mut Rng) -> &'static str {
    let results: Vec<&'static str> = TOPICS
        .iter()
        .filter(|t| t.0 == category)
        .map(|t| t.3)
        .collect();
    if results.is_empty() {
        "已到场处理，情况已解决"
    } else {
        results[rng.below(results.len())]
    }
}

/// What a worker chooses to show; most of the day it is simply on line.
pub const STATUSES: [(&str, u32); 3] = [("online", 70), ("busy", 22), ("away", 8)];
pub const TEXTS: [(&str, u32); 5] = [
    ("", 50),
    ("入户走访", 20),
    ("巡查中", 15),
    ("开会", 8),
    ("处理工单", 7),
];

/// How one simulated worker behaves: mean gaps between its own changes.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub status_every: Duration,
    pub move_every: Duration,
    pub leave_every: Duration,
    pub away_for: (Duration, Duration),
    pub ack_after: (Duration, Duration),
    pub report_after: (Duration, Duration),
    pub step_after: (Duration, Duration),
}

impl Pace {
    /// Every step within a fraction of a second, for tests.
    pub fn quick() -> Pace {
        let ms = Duration::from_millis;
        Pace {
            status_every: Duration::from_secs(30),
            move_every: Duration::from_secs(30),
            leave_every: Duration::from_secs(3600),
            away_for: (ms(500), ms(1000)),
            ack_after: (ms(50), ms(200)),
            report_after: (ms(100), ms(300)),
            step_after: (ms(50), ms(200)),
        }
    }

    /// Lively enough to watch: a city of 9,851 terminals changes a few times a second.
    pub fn demo() -> Pace {
        Pace {
            status_every: Duration::from_secs(8 * 60),
            move_every: Duration::from_secs(90),
            leave_every: Duration::from_secs(45 * 60),
            away_for: (Duration::from_secs(20), Duration::from_secs(180)),
            ack_after: (Duration::from_secs(3), Duration::from_secs(20)),
            report_after: (Duration::from_secs(20), Duration::from_secs(120)),
            step_after: (Duration::from_secs(2), Duration::from_secs(10)),
        }
    }
}

/// A worker's position a short walk from `(lat, lon)`: up to about 150 m.
pub fn wander(rng: &mut Rng, lat: f64, lon: f64) -> (f64, f64) {
    let d = 0.0015;
    (
        lat + (rng.unit() * 2.0 - 1.0) * d,
        lon + (rng.unit() * 2.0 - 1.0) * d * 1.45,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_reproducible_and_spreads_over_every_category() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<Request> = (0..2000).map(|_| request(&mut a)).collect();
        let ys: Vec<Request> = (0..2000).map(|_| request(&mut b)).collect();
        assert_eq!(xs, ys);
        let cats: std::collections::BTreeSet<&str> = xs.iter().map(|r| r.category).collect();
        assert_eq!(cats.len(), 12, "{cats:?}");
        let hotline = xs.iter().filter(|r| r.source == "hotline_12345").count();
        assert!((1100..1400).contains(&hotline), "{hotline}");
        let emergencies = xs.iter().filter(|r| r.priority == "emergency").count();
        assert!((10..90).contains(&emergencies), "{emergencies}");
        // A report answers the request's own category.
        let mut r = Rng::new(3);
        for x in &xs[..50] {
            let result = result_for(x.category, &mut r);
            assert!(
                TOPICS.iter().any(|t| t.0 == x.category && t.3 == result),
                "{x:?} → {result}"
            );
        }
    }

    #[test]
    fn gaps_are_bounded_and_average_their_mean() {
        let mut r = Rng::new(1);
        let mean = Duration::from_secs(60);
        let gaps: Vec<Duration> = (0..10_000).map(|_| r.exp(mean)).collect();
        assert!(gaps.iter().all(|g| *g <= mean * 8));
        let avg = gaps.iter().sum::<Duration>() / gaps.len() as u32;
        assert!((55..65).contains(&avg.as_secs()), "{avg:?}");
        let b = r.between(Duration::from_secs(2), Duration::from_secs(4));
        assert!((2..=4).contains(&b.as_secs()));
    }
}
