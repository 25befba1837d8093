//! Distances at city scale and the nearest registered site to a point.

use crate::org::GeoPoint;

/// Metres between two points: an equirectangular projection at their mean latitude, within a
/// metre of the great-circle distance over the few kilometres a site's radius spans.
pub fn metres(a: GeoPoint, b: GeoPoint) -> f64 {
    const M_PER_DEG_LAT: f64 = 110_574.0;
    const M_PER_DEG_LON_EQUATOR: f64 = 111_320.0;
    let lat = ((a.lat + b.lat) / 2.0).to_radians();
    let dx = (b.lon - a.lon) * M_PER_DEG_LON_EQUATOR * lat.cos();
    let dy = (b.lat - a.lat) * M_PER_DEG_LAT;
    (dx * dx + dy * dy).sqrt()
}

/// Sites bucketed on a grid of cells at least as wide as the largest radius, so a point is
/// compared with the sites of its own cell and the eight around it only.
pub struct SiteIndex {
    cell_deg: f64,
    cells: std::collections::HashMap<(i32, i32), Vec<u32>>,
    points: Vec<(GeoPoint, f64)>,
}

impl SiteIndex {
    /// `sites`: each site's point and radius in metres, in the order their indices name.
    pub fn new(sites: impl IntoIterator<Item = (GeoPoint, f64)>) -> SiteIndex {
        let points: Vec<(GeoPoint, f64)> = sites.into_iter().collect();
        let widest = points.iter().map(|p| p.1).fold(1.0f64, f64::max);
        // A degree of longitude is shortest at the highest latitude; 60° keeps a cell wide
        // enough anywhere a city of this kind lies (Jiamusi is at 47°).
        let cell_deg = widest / (111_320.0 * 60f64.to_radians().cos());
        let mut cells: std::collections::HashMap<(i32, i32), Vec<u32>> = Default::default();
        for (i, (p, _)) in points.iter().enumerate() {
            cells
                .entry(Self::cell(cell_deg, *p))
                .or_default()
                .push(i as u32);
        }
        SiteIndex {
            cell_deg,
            cells,
            points,
        }
    }

    fn cell(size: f64, p: GeoPoint) -> (i32, i32) {
        ((p.lat / size).floor() as i32, (p.lon / size).floor() as i32)
    }

    /// The nearest site whose radius holds `p`, if any (ties go to the lower index).
    pub fn nearest(&self, p: GeoPoint) -> Option<u32> {
        let (cy, cx) = Self::cell(self.cell_deg, p);
        let mut best: Option<(f64, u32)> = None;
        for dy in -1..=1 {
            for dx in -1..=1 {
                let Some(list) = self.cells.get(&(cy + dy, cx + dx)) else {
                    continue;
                };
                for &i in list {
                    let (q, r) = self.points[i as usize];
                    let d = metres(p, q);
                    if d <= r && best.is_none_or(|(bd, bi)| d < bd || (d == bd && i < bi)) {
                        best = Some((d, i));
                    }
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Whether any site lies within `m` metres plus its radius of `p`.
    pub fn near_any(&self, p: GeoPoint, m: f64) -> bool {
        // Beyond the neighbouring cells only if `m` is wider than a cell: then look at all.
        if m > self.cell_deg * 111_320.0 * 60f64.to_radians().cos() {
            return self.points.iter().any(|(q, r)| metres(p, *q) <= r + m);
        }
        let (cy, cx) = Self::cell(self.cell_deg, p);
        (-2..=2).any(|dy| {
            (-2..=2).any(|dx| {
                self.cells.get(&(cy + dy, cx + dx)).is_some_and(|l| {
                    l.iter().any(|&i| {
                        let (q, r) = self.points[i as usize];
                        metres(p, q) <= r + m
                    })
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: f64, lon: f64) -> GeoPoint {
        GeoPoint { lat, lon }
    }

    #[test]
    fn distances_at_jiamusi_match_the_great_circle() {
        // 0.01° of latitude is 1,105.7 m; 0.01° of longitude at 46.8° is 762 m.
        let a = at(46.80, 130.32);
        assert!((metres(a, at(46.81, 130.32)) - 1105.7).abs() < 1.0);
        assert!((metres(a, at(46.80, 130.33)) - 762.2).abs() < 1.5);
        assert_eq!(metres(a, a), 0.0);
    }

    #[test]
    fn the_nearest_site_within_its_radius_is_found_and_no_other() {
        let sites = vec![
            (at(46.8000, 130.3200), 150.0),
            (at(46.8020, 130.3200), 150.0), // 221 m north
            (at(46.9000, 130.5000), 500.0),
        ];
        let ix = SiteIndex::new(sites.clone());
        assert_eq!(ix.nearest(at(46.8001, 130.3200)), Some(0));
        assert_eq!(ix.nearest(at(46.8012, 130.3200)), Some(1)); // 133 m from 0, 88 m from 1
        assert_eq!(ix.nearest(at(46.8010, 130.3250)), None); // 400 m east of both
        assert_eq!(ix.nearest(at(46.9030, 130.5000)), Some(2)); // 332 m, inside 500
        // Against a brute-force search on a lattice of points.
        for i in 0..60 {
            for j in 0..60 {
                let p = at(46.795 + i as f64 * 0.0003, 130.314 + j as f64 * 0.0004);
                let brute = sites
                    .iter()
                    .enumerate()
                    .filter(|(_, (q, r))| metres(p, *q) <= *r)
                    .min_by(|a, b| metres(p, a.1.0).total_cmp(&metres(p, b.1.0)))
                    .map(|(i, _)| i as u32);
                assert_eq!(ix.nearest(p), brute, "{p:?}");
            }
        }
        assert!(ix.near_any(at(46.8000, 130.3260), 400.0)); // 457 m from site 0
        assert!(!ix.near_any(at(46.8000, 130.3300), 400.0)); // 762 m
        assert!(
            SiteIndex::new(Vec::new())
                .nearest(at(46.8, 130.3))
                .is_none()
        );
    }
}
