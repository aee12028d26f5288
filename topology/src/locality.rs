//! A site order that puts sites close in cost next to each other.
//!
//! The path search prunes one block of destinations at a time with the block's worst and
//! best costs; that bound is only tight when a block's destinations are near one another.
//! Inventories come in any order, so the search renumbers sites first: farthest-point
//! sampling picks one landmark per block, every site joins its nearest landmark, landmarks are
//! chained nearest-neighbour first, and sites are sorted by (landmark, distance to it).
//! Correctness never depends on the order; only speed does.

use crate::matrix::CostMatrix;
use crate::paths::SUB;

/// `order[p]` is the original index of the site placed at position `p`.
pub fn locality_order(cm: &CostMatrix) -> Vec<u32> {
    let n = cm.len();
    if n <= 2 * SUB {
        return (0..n as u32).collect();
    }
    // Symmetric distance; unreachable pairs are far.
    let d = |i: usize, j: usize| {
        let c = cm.cost(i, j).min(cm.cost(j, i));
        if c.is_finite() { c } else { f32::MAX }
    };
    let k = n.div_ceil(SUB);
    let mut landmarks = vec![0usize];
    let mut near: Vec<f32> = (0..n).map(|i| if i == 0 { 0.0 } else { d(0, i) }).collect();
    let mut owner = vec![0usize; n];
    while landmarks.len() < k {
        let (far, &dist) = near
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1).then(y.0.cmp(&x.0)))
            .expect("n > 0");
        if dist <= 0.0 {
            break;
        }
        let slot = landmarks.len();
        landmarks.push(far);
        for i in 0..n {
            let x = if i == far { 0.0 } else { d(far, i) };
            if x < near[i] {
                near[i] = x;
                owner[i] = slot;
            }
        }
    }
    // Chain landmarks so that neighbouring blocks are neighbouring places.
    let mut rank = vec![usize::MAX; landmarks.len()];
    let mut at = 0;
    for step in 0..landmarks.len() {
        rank[at] = step;
        let next = (0..landmarks.len())
            .filter(|&s| rank[s] == usize::MAX)
            .min_by(|&x, &y| d(landmarks[at], landmarks[x]).total_cmp(&d(landmarks[at], landmarks[y])));
        match next {
            Some(s) => at = s,
            None => break,
        }
    }
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by(|&i, &j| {
        let (i, j) = (i as usize, j as usize);
        rank[owner[i]]
            .cmp(&rank[owner[j]])
            .then(near[i].total_cmp(&near[j]))
            .then(i.cmp(&j))
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_permutation_and_groups_clusters() {
        // Three clusters of 30 sites, interleaved in the input.
        let n = 90;
        let centre = |i: usize| (i % 3) as f32 * 1000.0;
        let pos = |i: usize| centre(i) + (i / 3) as f32;
        let costs = (0..n * n)
            .map(|x| (pos(x / n) - pos(x % n)).abs() + 1.0)
            .collect();
        let cm = CostMatrix::from_costs(n, costs, vec![true; n], vec![true; n], 0.0);
        let order = locality_order(&cm);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
        // Each run of 30 in the new order holds one cluster only.
        for chunk in order.chunks(30) {
            let c = chunk[0] as usize % 3;
            assert!(chunk.iter().all(|&i| i as usize % 3 == c), "{chunk:?}");
        }
    }
}
