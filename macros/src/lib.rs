//! Procedural macros of durafn. Use them through the `durafn` crate; the
//! user manual is on `durafn::durable_fn`.

mod check;
mod ctxt;
mod entry;
mod expand;
mod parse;
mod prim;

use proc_macro::TokenStream;

/// See `durafn::durable_fn` for the manual.
#[proc_macro_attribute]
pub fn durable_fn(args: TokenStream, input: TokenStream) -> TokenStream {
    entry::durable_fn(args.into(), input.into()).into()
}
