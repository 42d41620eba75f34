/// Declares a middleware `Service` and its `Layer`, both holding the shared [`Tenancy`].
macro_rules! tenancy_layer {
    ($(#[$smeta:meta])* $service:ident, $(#[$lmeta:meta])* $layer:ident) => {
        $(#[$smeta])*
        #[derive(Debug, Clone)]
        pub struct $service<S> {
            inner: S,
            tenancy: tenancy_http::Tenancy,
        }

        impl<S> $service<S> {
            /// Wraps `inner`.
            pub fn new(inner: S, tenancy: tenancy_http::Tenancy) -> Self {
                Self { inner, tenancy }
            }

            /// The wrapped service.
            pub fn get_ref(&self) -> &S {
                &self.inner
            }

            /// A layer that wraps services in this middleware.
            pub fn layer(tenancy: tenancy_http::Tenancy) -> $layer {
                $layer::new(tenancy)
            }
        }

        $(#[$lmeta])*
        #[derive(Debug, Clone)]
        pub struct $layer {
            tenancy: tenancy_http::Tenancy,
        }

        impl $layer {
            /// A layer deciding with `tenancy`.
            pub fn new(tenancy: tenancy_http::Tenancy) -> Self {
                Self { tenancy }
            }
        }

        impl<S> tower_layer::Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> Self::Service {
                $service::new(inner, self.tenancy.clone())
            }
        }
    };
}

/// Takes the service that was driven to readiness, leaving a clone in its place.
pub(crate) fn take_ready<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}
