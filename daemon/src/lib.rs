//! jobd (the job service) and jobctl (its client).
