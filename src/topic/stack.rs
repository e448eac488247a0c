//! A LIFO work stack for the iterative trie walks: the first `N` entries live inline, so a walk
//! over ordinary topics allocates nothing; only a pathological trie (more than `N` branches
//! pending at once) spills onto the heap. Walks are iterative rather than recursive because a
//! 65,535-byte filter can have 32,768 levels, deep enough to overflow a thread's stack.

pub(crate) struct SmallStack<T, const N: usize> {
    inline: [Option<T>; N],
    inline_len: usize,
    /// Used only once `inline` is full, so the top of the stack is always the spill's last entry
    /// when the spill is non-empty.
    spill: Vec<T>,
}

impl<T, const N: usize> SmallStack<T, N> {
    #[inline]
    pub(crate) fn new() -> Self {
        SmallStack {
            inline: [const { None }; N],
            inline_len: 0,
            spill: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, item: T) {
        if self.inline_len < N {
            self.inline[self.inline_len] = Some(item);
            self.inline_len += 1;
        } else {
            self.spill.push(item);
        }
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        if self.inline_len == 0 {
            return None;
        }
        self.inline_len -= 1;
        self.inline[self.inline_len].take()
    }

    #[inline]
    pub(crate) fn last_mut(&mut self) -> Option<&mut T> {
        if let Some(item) = self.spill.last_mut() {
            return Some(item);
        }
        if self.inline_len == 0 {
            return None;
        }
        self.inline[self.inline_len - 1].as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::SmallStack;

    #[test]
    fn lifo_across_the_spill() {
        let mut stack: SmallStack<u32, 4> = SmallStack::new();
        assert_eq!(stack.pop(), None);
        for i in 0..10 {
            stack.push(i);
        }
        assert_eq!(stack.last_mut().copied(), Some(9));
        for i in (0..10).rev() {
            assert_eq!(stack.pop(), Some(i));
        }
        assert_eq!(stack.pop(), None);
        assert!(stack.last_mut().is_none());
        stack.push(7);
        *stack.last_mut().unwrap() = 8;
        assert_eq!(stack.pop(), Some(8));
    }
}
