//! Procedural macros of durafn. Use them through the `durafn` crate; the
//! user manual is on `durafn::durable_fn`.

mod check;
mod ctxt;
mod expand;
mod parse;
mod prim;

use proc_macro::TokenStream;

/// See `durafn::durable_fn` for the manual.
#[proc_macro_attribute]
pub fn durable_fn(args: TokenStream, input: TokenStream) -> TokenStream {
    durable_fn_impl(args.into(), input.into()).into()
}

fn durable_fn_impl(
    args: proc_macro2::TokenStream,
    input: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let f: syn::ItemFn = match syn::parse2(input.clone()) {
        Ok(f) => f,
        Err(e) => {
            let msg = syn::Error::new(e.span(), "durafn: `#[durable_fn]` goes on an `async fn name(ctx: Ctx, event: Event<T>) -> Result<R>`");
            let err = msg.to_compile_error();
            return quote::quote!(#err #input);
        }
    };
    let cx = ctxt::Ctxt::new();
    let attr = parse::attr(&cx, args);
    let sig = parse::signature(&cx, &f);
    let ctx_ident = sig.as_ref().and_then(|s| parse::pat_ident(s.ctx_pat));
    let params: Vec<&syn::Pat> = f
        .sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            syn::FnArg::Typed(t) => Some(&*t.pat),
            syn::FnArg::Receiver(_) => None,
        })
        .collect();
    check::body(&cx, &f.block, &params, ctx_ident);
    let errors = cx.check().err().map(|e| e.to_compile_error());
    match sig {
        // The expansion compiles even when the body breaks a rule, so the
        // user sees the durafn errors, not a cascade, and editors keep
        // completing inside the function.
        Some(sig) => {
            let out = expand::expand(&f, &attr, &sig);
            quote::quote!(#errors #out)
        }
        None => quote::quote!(#errors #input),
    }
}
