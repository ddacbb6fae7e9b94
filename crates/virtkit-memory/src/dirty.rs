//! Dirty-page tracking.
//!
//! When guest RAM is built with [`crate::GuestMemoryBuilder::track_dirty_pages`], VMMs register
//! the memory slots with KVM's dirty logging on; KVM then hands back one bitmap per slot
//! (one bit per 4 KiB page, in 64-bit words). [`dirty_pages`] turns such a bitmap into guest
//! page addresses, and [`DirtyPageSink`] is the hook a consumer (a migration or snapshot
//! writer) implements to receive them.

use crate::{GuestAddress, RamRegion, PAGE_SIZE};

/// Receives dirty guest pages.
pub trait DirtyPageSink {
    /// Called once per dirty 4 KiB page.
    fn page_dirty(&mut self, page: GuestAddress);
}

impl DirtyPageSink for Vec<GuestAddress> {
    fn page_dirty(&mut self, page: GuestAddress) {
        self.push(page);
    }
}

/// The guest addresses of the pages set in `bitmap` (KVM's layout: bit `i` of word `w` is the
/// page `64 * w + i` of `region`). Bits past the end of the region are ignored.
pub fn dirty_pages<'a>(
    region: &'a RamRegion,
    bitmap: &'a [u64],
) -> impl Iterator<Item = GuestAddress> + 'a {
    let pages = region.size / PAGE_SIZE;
    bitmap.iter().enumerate().flat_map(move |(w, word)| {
        let word = *word;
        (0..64u64).filter_map(move |bit| {
            let page = w as u64 * 64 + bit;
            (word & (1 << bit) != 0 && page < pages)
                .then(|| GuestAddress(region.start.0 + page * PAGE_SIZE))
        })
    })
}

/// Feeds every dirty page of `bitmap` to `sink`; returns how many there were.
pub fn report_dirty(region: &RamRegion, bitmap: &[u64], sink: &mut dyn DirtyPageSink) -> usize {
    let mut n = 0;
    for page in dirty_pages(region, bitmap) {
        sink.page_dirty(page);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MIB;

    #[test]
    fn bits_map_to_pages() {
        let region = RamRegion {
            start: GuestAddress(0x1_0000_0000),
            size: MIB,
        };
        // 256 pages: bits 0, 3 and 65 set, plus a bit beyond the region (word 4).
        let bitmap = [0b1001, 0b10, 0, 0, 1];
        let mut got = Vec::new();
        assert_eq!(report_dirty(&region, &bitmap, &mut got), 3);
        assert_eq!(
            got,
            vec![
                GuestAddress(0x1_0000_0000),
                GuestAddress(0x1_0000_3000),
                GuestAddress(0x1_0004_1000)
            ]
        );
    }
}
