//! A serde `Deserializer` adapter that charges what a decoded value will hold on the
//! heap against a fixed budget before it is built.
//!
//! postcard alone already refuses to preallocate for a length prefix longer than the
//! remaining input, but a short input can still describe a large value: an empty string
//! costs one byte on the wire and 24 bytes in a `Vec<String>`, an empty label pair two
//! bytes and 48. The adapter makes that ratio a chosen constant (DESIGN §3.4) instead of
//! whatever the type layout happens to be. It sits between postcard and the derived
//! `Deserialize` impls, so it covers every type in a message, including the model types
//! this module does not own.
//!
//! What is charged, always before the allocation it stands for or, for serde's initial
//! reservation, before the first element is stored:
//! - the capacity a `Vec` reserves: serde's initial `with_capacity` (the length hint,
//!   capped at 1 MiB) and every later growth, modelled on `Vec`'s doubling, so the budget
//!   bounds what is really reserved rather than what is used;
//! - every string and byte string the visitor receives: its length, which is what an
//!   owned copy occupies;
//! - map entries (no message has a map): `size_of` key and value.
//!
//! Tuples, structs and enum variants are laid out inline in their parent, which already
//! paid for them, so their fields are not charged again.

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use std::cell::Cell;
use std::fmt;
use std::mem::size_of;

/// What may still be spent, and whether a charge was ever refused (postcard replaces a
/// custom error's text with a generic one, so the refusal is recorded here instead).
pub(crate) struct Budget {
    remaining: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            remaining: Cell::new(limit),
            exceeded: Cell::new(false),
        }
    }

    /// True once a charge did not fit; the decode that made it has failed.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.get()
    }

    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.remaining.get().checked_sub(bytes) {
            Some(left) => {
                self.remaining.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("decode budget exceeded"))
            }
        }
    }
}

/// Whether the elements a visitor is handed get their own heap slot (a sequence) or sit
/// inside a value already paid for (a tuple, a struct, an enum variant's fields).
#[derive(Clone, Copy)]
enum Elements {
    Charged,
    Inline,
}

/// Wraps a deserializer so everything built through it is charged to `budget`.
pub(crate) struct Budgeted<'b, D> {
    inner: D,
    budget: &'b Budget,
}

impl<'b, D> Budgeted<'b, D> {
    pub(crate) fn new(inner: D, budget: &'b Budget) -> Self {
        Budgeted { inner, budget }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*) => $elements:ident;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method($($arg,)* Wrap {
                    inner: visitor,
                    budget: self.budget,
                    elements: Elements::$elements,
                })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Budgeted<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any() => Inline;
        deserialize_bool() => Inline;
        deserialize_i8() => Inline;
        deserialize_i16() => Inline;
        deserialize_i32() => Inline;
        deserialize_i64() => Inline;
        deserialize_i128() => Inline;
        deserialize_u8() => Inline;
        deserialize_u16() => Inline;
        deserialize_u32() => Inline;
        deserialize_u64() => Inline;
        deserialize_u128() => Inline;
        deserialize_f32() => Inline;
        deserialize_f64() => Inline;
        deserialize_char() => Inline;
        deserialize_str() => Inline;
        deserialize_string() => Inline;
        deserialize_bytes() => Inline;
        deserialize_byte_buf() => Inline;
        deserialize_option() => Inline;
        deserialize_unit() => Inline;
        deserialize_unit_struct(name: &'static str) => Inline;
        deserialize_newtype_struct(name: &'static str) => Inline;
        deserialize_seq() => Charged;
        deserialize_tuple(len: usize) => Inline;
        deserialize_tuple_struct(name: &'static str, len: usize) => Inline;
        deserialize_map() => Charged;
        deserialize_struct(name: &'static str, fields: &'static [&'static str]) => Inline;
        deserialize_enum(name: &'static str, variants: &'static [&'static str]) => Inline;
        deserialize_identifier() => Inline;
        deserialize_ignored_any() => Inline;
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visitor that passes everything through, charging strings and wrapping whatever it
/// is handed to read further from.
struct Wrap<'b, V> {
    inner: V,
    budget: &'b Budget,
    elements: Elements,
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

macro_rules! charged_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.budget.charge::<E>(v.len())?;
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
    }

    charged_visit! {
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Budgeted::new(d, self.budget))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner
            .visit_newtype_struct(Budgeted::new(d, self.budget))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let reserve = match self.elements {
            // Read now: it is the hint serde's `Vec` impl sizes its first reservation by.
            Elements::Charged => Some(Reserve::new(seq.size_hint())),
            Elements::Inline => None,
        };
        self.inner.visit_seq(Seq {
            inner: seq,
            budget: self.budget,
            reserve,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Map {
            inner: map,
            budget: self.budget,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Enum {
            inner: data,
            budget: self.budget,
        })
    }
}

/// Hands the budget on to whatever a seed deserializes next.
struct Seed<'b, S> {
    inner: S,
    budget: &'b Budget,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Budgeted::new(d, self.budget))
    }
}

/// serde's own cap on a sequence's first reservation (`size_hint::cautious`).
const MAX_PREALLOC_BYTES: usize = 1024 * 1024;

/// Tracks the capacity serde's `Vec<T>` impl holds as it fills: `with_capacity` of the
/// hint (capped at [`MAX_PREALLOC_BYTES`]), then `Vec::push`'s amortised doubling.
struct Reserve {
    hint: Option<usize>,
    /// Capacity in elements, once the element size is known (at the first element).
    capacity: Option<usize>,
    len: usize,
}

impl Reserve {
    fn new(hint: Option<usize>) -> Self {
        Reserve {
            hint,
            capacity: None,
            len: 0,
        }
    }

    /// Bytes newly reserved so that one more element of `size` bytes can be stored.
    fn bytes_for_next(&mut self, size: usize) -> usize {
        if size == 0 {
            return 0;
        }
        let mut reserved = 0;
        let mut capacity = match self.capacity {
            Some(c) => c,
            None => {
                let c = self.hint.unwrap_or(0).min(MAX_PREALLOC_BYTES / size);
                reserved = c.saturating_mul(size);
                c
            }
        };
        if self.len == capacity {
            // std's growth rule: double, at least one more, and a minimum first
            // allocation depending on the element size.
            let min_first = match size {
                1 => 8,
                2..=1024 => 4,
                _ => 1,
            };
            let grown = capacity
                .saturating_mul(2)
                .max(self.len.saturating_add(1))
                .max(min_first);
            reserved = reserved.saturating_add((grown - capacity).saturating_mul(size));
            capacity = grown;
        }
        self.capacity = Some(capacity);
        self.len += 1;
        reserved
    }
}

struct Seq<'b, A> {
    inner: A,
    budget: &'b Budget,
    /// Present for a sequence that becomes a `Vec`, absent for inline tuples and structs.
    reserve: Option<Reserve>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        // postcard reports exactly how many elements are left while they fit in the input,
        // so the call that finds the end is not charged for an element that never comes.
        if let Some(reserve) = &mut self.reserve
            && self.inner.size_hint() != Some(0)
        {
            let bytes = reserve.bytes_for_next(size_of::<T::Value>());
            self.budget.charge::<A::Error>(bytes)?;
        }
        self.inner.next_element_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct Map<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if self.inner.size_hint() != Some(0) {
            self.budget.charge::<A::Error>(size_of::<K::Value>())?;
        }
        self.inner.next_key_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.budget.charge::<A::Error>(size_of::<V::Value>())?;
        self.inner.next_value_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct Enum<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'b, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'b, A> {
    type Error = A::Error;
    type Variant = Variant<'b, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(Seed {
            inner: seed,
            budget: self.budget,
        })?;
        Ok((
            value,
            Variant {
                inner: variant,
                budget: self.budget,
            },
        ))
    }
}

struct Variant<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(
            len,
            Wrap {
                inner: visitor,
                budget: self.budget,
                elements: Elements::Inline,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(
            fields,
            Wrap {
                inner: visitor,
                budget: self.budget,
                elements: Elements::Inline,
            },
        )
    }
}
