//! A LIFO work stack for the iterative trie walks: the first `N` entries live inline, so a walk
//! over ordinary topics allocates nothing; only a pathological trie (more than `N` branches
//! pending at once) spills onto the heap. Walks are iterative rather than recursive because a
//! 65,535-byte filter can have 32,768 levels, deep enough to overflow a thread's stack.

use std::mem::MaybeUninit;

pub(crate) struct SmallStack<T, const N: usize> {
    /// `inline[..inline_len]` are initialised. Left uninitialised rather than filled with
    /// `None`: a walk runs once per publish, and zeroing 32 entries (768 bytes) cost more than
    /// most walks (about 3 % of a fan-in message's instructions in callgrind).
    inline: [MaybeUninit<T>; N],
    inline_len: usize,
    /// Used only once `inline` is full, so the top of the stack is always the spill's last entry
    /// when the spill is non-empty.
    spill: Vec<T>,
}

impl<T, const N: usize> SmallStack<T, N> {
    #[inline]
    pub(crate) fn new() -> Self {
        SmallStack {
            inline: [const { MaybeUninit::uninit() }; N],
            inline_len: 0,
            spill: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, item: T) {
        if self.inline_len < N {
            self.inline[self.inline_len].write(item);
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
        // SAFETY: entries below the old `inline_len` were written by `push`; lowering
        // `inline_len` first means this one is read out exactly once.
        Some(unsafe { self.inline[self.inline_len].assume_init_read() })
    }

    #[inline]
    pub(crate) fn last_mut(&mut self) -> Option<&mut T> {
        if let Some(item) = self.spill.last_mut() {
            return Some(item);
        }
        if self.inline_len == 0 {
            return None;
        }
        // SAFETY: below `inline_len`, so written by `push` and not yet popped.
        Some(unsafe { self.inline[self.inline_len - 1].assume_init_mut() })
    }
}

impl<T, const N: usize> Drop for SmallStack<T, N> {
    fn drop(&mut self) {
        for entry in &mut self.inline[..self.inline_len] {
            // SAFETY: below `inline_len`, so initialised, and dropped once (the stack is going).
            unsafe { entry.assume_init_drop() };
        }
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

    #[test]
    fn entries_left_on_the_stack_are_dropped_once() {
        use std::rc::Rc;
        let counted = Rc::new(());
        {
            let mut stack: SmallStack<Rc<()>, 4> = SmallStack::new();
            for _ in 0..6 {
                stack.push(Rc::clone(&counted));
            }
            drop(stack.pop());
            assert_eq!(Rc::strong_count(&counted), 6);
        }
        assert_eq!(Rc::strong_count(&counted), 1);
    }
}
